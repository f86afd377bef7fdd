//! The etcd backend of cluster mode: one client per endpoint (the next one on failure), the
//! subnet claim in one transaction, the lease and its keep-alive, the subnet list and watch.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    LeaseKeepAliveStream, LeaseKeeper, PutOptions, TlsOptions, Txn, TxnOp, TxnOpResponse,
    WatchOptions, WatchStream,
};
use ipnet::Ipv4Net;
use thiserror::Error;

use crate::cluster_core::{
    Claim, ClusterBackend, ClusterConfig, SUBNETS_PREFIX, SubnetRecord, claim, parse_subnet_key,
    subnet_key,
};

/// How long one etcd request (or a connection) may take before the endpoint counts as down.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// An etcd failure; every variant names the endpoint (or file) and what was being done.
#[derive(Debug, Error)]
pub enum EtcdError {
    /// A TLS file could not be read.
    #[error("cannot read {what} {path}: {source}")]
    TlsFile {
        /// `etcd_ca`, `etcd_cert` or `etcd_key`.
        what: &'static str,
        /// The file.
        path: String,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// An endpoint did not answer or refused us.
    #[error("etcd {endpoint}: {what}: {reason}")]
    Request {
        /// The endpoint.
        endpoint: String,
        /// What was being done.
        what: &'static str,
        /// The error with its causes (TLS handshake failures say what the peer refused).
        reason: String,
    },
    /// No endpoint answered.
    #[error("no etcd endpoint answers: {0}")]
    NoEndpoint(String),
    /// The lease expired (the store deleted this node's key).
    #[error("etcd {endpoint}: this node's lease {lease:x} expired")]
    LeaseExpired {
        /// The endpoint.
        endpoint: String,
        /// The lease.
        lease: i64,
    },
    /// A stream ended or was cancelled by the server.
    #[error("etcd {endpoint}: the {what} stream ended")]
    StreamEnded {
        /// The endpoint.
        endpoint: String,
        /// `watch` or `keep-alive`.
        what: &'static str,
    },
}

/// An error and its causes, joined (tonic's transport errors say little at the top).
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        let part = e.to_string();
        if !text.contains(&part) {
            text.push_str(": ");
            text.push_str(&part);
        }
        source = e.source();
    }
    text
}

/// A client on one etcd endpoint, with this node's lease once granted. Clones share the
/// connection and the lease.
#[derive(Clone)]
pub struct EtcdBackend {
    client: Client,
    endpoint: String,
    /// The node's name (claims compare the holder with it).
    node: String,
    /// The node's lease (0 before [`EtcdBackend::grant`]).
    lease: i64,
}

/// The connect options for `config` (TLS files read here).
fn options(config: &ClusterConfig) -> Result<ConnectOptions, EtcdError> {
    let mut options = ConnectOptions::new()
        .with_timeout(REQUEST_TIMEOUT)
        .with_connect_timeout(REQUEST_TIMEOUT)
        .with_keep_alive(Duration::from_secs(1), Duration::from_secs(2))
        .with_keep_alive_while_idle(true);
    if let Some(ca) = &config.etcd_ca {
        let read = |what: &'static str, path: &std::path::Path| {
            std::fs::read(path).map_err(|source| EtcdError::TlsFile {
                what,
                path: path.display().to_string(),
                source,
            })
        };
        let mut tls = TlsOptions::new().ca_certificate(Certificate::from_pem(read("etcd_ca", ca)?));
        if let (Some(cert), Some(key)) = (&config.etcd_cert, &config.etcd_key) {
            tls = tls.identity(Identity::from_pem(
                read("etcd_cert", cert)?,
                read("etcd_key", key)?,
            ));
        }
        options = options.with_tls(tls);
    }
    Ok(options)
}

impl EtcdBackend {
    /// Connects to the first endpoint that answers, trying them from `start` on (wrapping);
    /// returns the client and the index of its endpoint.
    pub async fn connect(
        config: &ClusterConfig,
        node: &str,
        start: usize,
    ) -> Result<(Self, usize), EtcdError> {
        let options = options(config)?;
        let n = config.etcd_endpoints.len();
        let mut failures = Vec::new();
        for i in 0..n {
            let index = (start + i) % n;
            let endpoint = config.etcd_endpoints[index].clone();
            match Self::connect_one(&endpoint, options.clone(), config).await {
                Ok(client) => {
                    return Ok((
                        Self {
                            client,
                            endpoint,
                            node: node.to_string(),
                            lease: 0,
                        },
                        index,
                    ));
                }
                Err(e) => failures.push(e.to_string()),
            }
        }
        Err(EtcdError::NoEndpoint(failures.join("; ")))
    }

    async fn connect_one(
        endpoint: &str,
        options: ConnectOptions,
        config: &ClusterConfig,
    ) -> Result<Client, EtcdError> {
        let err = |what, e: &dyn std::error::Error| {
            let mut reason = chain(e);
            // With TLS 1.3 the server refuses a client certificate after the handshake: the
            // client sees a `bad_certificate` alert, or only a closed (or reset) connection,
            // depending on timing.
            let refused = [
                "connection closed",
                "broken pipe",
                "Connection reset",
                "Canceled",
                "BadCertificate",
                "CertificateRequired",
                "UnknownCA",
            ];
            if endpoint.starts_with("https://") && reason.contains("UnknownIssuer") {
                reason.push_str(&format!(
                    " (the server's certificate is not signed by etcd_ca {})",
                    config
                        .etcd_ca
                        .as_ref()
                        .map_or_else(String::new, |p| p.display().to_string())
                ));
            } else if endpoint.starts_with("https://") && refused.iter().any(|r| reason.contains(r))
            {
                reason.push_str(&match &config.etcd_cert {
                    Some(cert) => format!(
                        " (the server closed the TLS connection: it refused the client \
                         certificate {} (etcd_cert), which its --trusted-ca-file does not \
                         sign, or it is not etcd)",
                        cert.display()
                    ),
                    None => " (the server closed the TLS connection: it may require a client \
                             certificate; set etcd_cert and etcd_key)"
                        .to_string(),
                });
            }
            EtcdError::Request {
                endpoint: endpoint.to_string(),
                what,
                reason,
            }
        };
        let mut client =
            tokio::time::timeout(REQUEST_TIMEOUT, Client::connect([endpoint], Some(options)))
                .await
                .map_err(|e| err("connect", &e))?
                .map_err(|e| err("connect", &e))?;
        // The channel connects lazily: one cheap read proves the endpoint answers (and
        // that TLS and the client certificate are accepted).
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            client.get(
                SUBNETS_PREFIX,
                Some(GetOptions::new().with_prefix().with_count_only()),
            ),
        )
        .await
        .map_err(|e| err("first request", &e))?
        .map_err(|e| err("first request", &e))?;
        Ok(client)
    }

    /// The lease (0 before [`EtcdBackend::grant`]).
    pub fn lease_id(&self) -> i64 {
        self.lease
    }

    /// The endpoint this client talks to.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    fn failed(&self, what: &'static str, e: &dyn std::error::Error) -> EtcdError {
        EtcdError::Request {
            endpoint: self.endpoint.clone(),
            what,
            reason: chain(e),
        }
    }

    /// Uses `lease` if it is still alive, otherwise grants a new one of `ttl` seconds.
    /// Returns the lease.
    pub async fn grant(&mut self, lease: i64, ttl: u64) -> Result<i64, EtcdError> {
        if lease != 0 {
            let alive = self
                .client
                .lease_time_to_live(lease, None)
                .await
                .map_err(|e| self.failed("lease time-to-live", &e))?;
            if alive.ttl() > 0 {
                self.lease = lease;
                return Ok(lease);
            }
        }
        let ttl = i64::try_from(ttl).unwrap_or(i64::MAX);
        let granted = self
            .client
            .lease_grant(ttl, None)
            .await
            .map_err(|e| self.failed("lease grant", &e))?;
        self.lease = granted.id();
        Ok(self.lease)
    }

    /// The keep-alive stream of the lease.
    pub async fn keep_alive(&mut self) -> Result<(LeaseKeeper, LeaseKeepAliveStream), EtcdError> {
        self.client
            .lease_keep_alive(self.lease)
            .await
            .map_err(|e| self.failed("lease keep-alive", &e))
    }

    /// Sends one keep-alive and waits for its answer; an expired lease is an error.
    pub async fn renew(
        &self,
        keeper: &mut LeaseKeeper,
        stream: &mut LeaseKeepAliveStream,
    ) -> Result<(), EtcdError> {
        keeper
            .keep_alive()
            .await
            .map_err(|e| self.failed("lease keep-alive", &e))?;
        let answer = tokio::time::timeout(REQUEST_TIMEOUT, stream.message())
            .await
            .map_err(|e| self.failed("lease keep-alive", &e))?
            .map_err(|e| self.failed("lease keep-alive", &e))?;
        match answer {
            Some(r) if r.ttl() > 0 => Ok(()),
            Some(_) => Err(EtcdError::LeaseExpired {
                endpoint: self.endpoint.clone(),
                lease: self.lease,
            }),
            None => Err(EtcdError::StreamEnded {
                endpoint: self.endpoint.clone(),
                what: "keep-alive",
            }),
        }
    }

    /// Watches the subnet keys from `revision` on.
    pub async fn watch(&mut self, revision: i64) -> Result<WatchStream, EtcdError> {
        self.client
            .watch(
                SUBNETS_PREFIX,
                Some(
                    WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision),
                ),
            )
            .await
            .map_err(|e| self.failed("watch", &e))
    }

    /// The next batch of changes of a watch: every response already there after the first
    /// (coalesced), as (subnet, record or `None` when deleted). Records that cannot be read
    /// are reported as `Err((key, reason))`.
    pub async fn changes(&self, stream: &mut WatchStream) -> Result<Vec<WatchChange>, EtcdError> {
        let mut out = Vec::new();
        let first = stream
            .message()
            .await
            .map_err(|e| self.failed("watch", &e))?;
        let mut next = first;
        loop {
            let Some(response) = next else {
                return Err(EtcdError::StreamEnded {
                    endpoint: self.endpoint.clone(),
                    what: "watch",
                });
            };
            if response.canceled() {
                return Err(EtcdError::Request {
                    endpoint: self.endpoint.clone(),
                    what: "watch",
                    reason: format!(
                        "cancelled by the server (compacted at revision {}): {}",
                        response.compact_revision(),
                        response.cancel_reason()
                    ),
                });
            }
            for event in response.events() {
                let Some(kv) = event.kv() else { continue };
                let key = String::from_utf8_lossy(kv.key()).into_owned();
                let Some(subnet) = parse_subnet_key(&key) else {
                    out.push(WatchChange::Unreadable(key, "not a subnet key".into()));
                    continue;
                };
                match event.event_type() {
                    EventType::Delete => out.push(WatchChange::Deleted(subnet)),
                    EventType::Put => match SubnetRecord::from_json(kv.value()) {
                        Ok(record) => out.push(WatchChange::Put(subnet, record)),
                        Err(reason) => out.push(WatchChange::Unreadable(key, reason)),
                    },
                }
            }
            // Coalesce what is already there.
            match futures::FutureExt::now_or_never(stream.message()) {
                Some(Ok(Some(more))) => next = Some(more),
                Some(Ok(None)) => next = None,
                Some(Err(e)) => return Err(self.failed("watch", &e)),
                None => break,
            }
        }
        Ok(out)
    }

    /// Writes a subnet key as `record` under the lease, unconditionally (the bench and the
    /// tests use it to play other nodes).
    pub async fn put(&mut self, subnet: Ipv4Net, record: &SubnetRecord) -> Result<(), EtcdError> {
        self.client
            .put(
                subnet_key(subnet),
                record.to_json(),
                Some(PutOptions::new().with_lease(self.lease)),
            )
            .await
            .map_err(|e| self.failed("put", &e))?;
        Ok(())
    }
}

impl EtcdBackend {
    /// Revokes the lease: every key under it goes at once (the bench uses it to make many
    /// nodes leave together).
    pub async fn revoke(&mut self) -> Result<(), EtcdError> {
        self.client
            .lease_revoke(self.lease)
            .await
            .map_err(|e| self.failed("lease revoke", &e))?;
        self.lease = 0;
        Ok(())
    }

    /// Deletes a subnet key (the tests use it to play a node that leaves).
    pub async fn delete_subnet(&mut self, subnet: Ipv4Net) -> Result<(), EtcdError> {
        self.client
            .delete(subnet_key(subnet), None)
            .await
            .map_err(|e| self.failed("delete", &e))?;
        Ok(())
    }
}

/// One change seen by a watch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WatchChange {
    /// A subnet was taken or its record changed.
    Put(Ipv4Net, SubnetRecord),
    /// A subnet was freed (its holder left or its lease expired).
    Deleted(Ipv4Net),
    /// A key under the prefix that is not a readable subnet record: (key, why).
    Unreadable(String, String),
}

impl ClusterBackend for EtcdBackend {
    type Error = EtcdError;

    async fn take_subnet(
        &mut self,
        subnet: Ipv4Net,
        record: &SubnetRecord,
    ) -> Result<Claim, EtcdError> {
        let key = subnet_key(subnet);
        let put = || {
            TxnOp::put(
                key.clone(),
                record.to_json(),
                Some(PutOptions::new().with_lease(self.lease)),
            )
        };
        // A few rounds: the key may change between our read and our write.
        for _ in 0..5 {
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([put()])
                .or_else([TxnOp::get(key.clone(), None)]);
            let response = self
                .client
                .txn(txn)
                .await
                .map_err(|e| self.failed("take subnet", &e))?;
            if response.succeeded() {
                return Ok(Claim::Free);
            }
            let existing = response.op_responses().into_iter().find_map(|r| match r {
                TxnOpResponse::Get(g) => g.kvs().first().cloned(),
                _ => None,
            });
            let Some(kv) = existing else { continue };
            let holder = match SubnetRecord::from_json(kv.value()) {
                Ok(r) => r,
                Err(reason) => {
                    return Ok(Claim::TakenBy(format!("<unreadable record: {reason}>")));
                }
            };
            match claim(&self.node, Some(&holder)) {
                Claim::Ours => {
                    // An earlier run of this node: take it over with this lease, provided it
                    // did not change meanwhile.
                    let txn = Txn::new()
                        .when([Compare::mod_revision(
                            key.clone(),
                            CompareOp::Equal,
                            kv.mod_revision(),
                        )])
                        .and_then([put()]);
                    let response = self
                        .client
                        .txn(txn)
                        .await
                        .map_err(|e| self.failed("take over subnet", &e))?;
                    if response.succeeded() {
                        return Ok(Claim::Ours);
                    }
                }
                other => return Ok(other),
            }
        }
        Err(EtcdError::Request {
            endpoint: self.endpoint.clone(),
            what: "take subnet",
            reason: format!("the key {key} kept changing under us"),
        })
    }

    async fn list(&mut self) -> Result<(BTreeMap<Ipv4Net, SubnetRecord>, i64), EtcdError> {
        let response = self
            .client
            .get(SUBNETS_PREFIX, Some(GetOptions::new().with_prefix()))
            .await
            .map_err(|e| self.failed("list subnets", &e))?;
        let revision = response.header().map_or(0, |h| h.revision());
        let mut out = BTreeMap::new();
        for kv in response.kvs() {
            let key = String::from_utf8_lossy(kv.key());
            if let (Some(subnet), Ok(record)) =
                (parse_subnet_key(&key), SubnetRecord::from_json(kv.value()))
            {
                out.insert(subnet, record);
            }
        }
        Ok((out, revision))
    }
}
