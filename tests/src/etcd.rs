//! Real etcd for the cluster tests and the cluster benchmark: members (Debian's
//! `etcd-server`, `/usr/bin/etcd`) each in a throwaway network namespace, on an underlay
//! bridge that lives in a "hub" namespace of its own, where the node namespaces attach too.
//! Private ranges only, inside those namespaces; nothing leaves the machine. Members are
//! SIGKILLed and their data removed on drop.
//!
//! Test-side etcd reads and writes go through the daemon's own client
//! (`netns_holder::cluster::etcd::EtcdBackend`) on a thread inside the hub namespace.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};

use crate::node::{Node, in_netns_thread};
use crate::{ChildGuard, ScratchDir, run_ok, unique_name, wait_until};

/// The etcd binary (`$ETCD_BIN` overrides).
pub fn etcd_binary() -> PathBuf {
    std::env::var_os("ETCD_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/etcd"))
}

/// An underlay: a bridge in a hub namespace (address `<prefix>.254/24`), and veths from
/// other namespaces into it.
pub struct Underlay {
    hub: Node,
    prefix: String,
}

impl Underlay {
    /// A hub namespace with bridge `ul0`, up, at `<prefix>.254/24` (e.g. prefix
    /// `192.168.90`).
    pub fn new(prefix: &str) -> Result<Self> {
        let hub = Node::new()?;
        hub.run(&["ip", "link", "add", "ul0", "type", "bridge"])?;
        hub.run(&[
            "ip",
            "addr",
            "add",
            &format!("{prefix}.254/24"),
            "dev",
            "ul0",
        ])?;
        hub.run(&["ip", "link", "set", "ul0", "up"])?;
        Ok(Self {
            hub,
            prefix: prefix.to_string(),
        })
    }

    /// The hub namespace (reaches every attached address).
    pub fn hub(&self) -> &Node {
        &self.hub
    }

    /// `<prefix>.<host>`.
    pub fn address(&self, host: u8) -> String {
        format!("{}.{host}", self.prefix)
    }

    /// Attaches `node` with link `u0` at `<prefix>.<host>/24`; returns the address.
    pub fn attach(&self, node: &Node, host: u8) -> Result<String> {
        let address = self.address(host);
        let port = unique_name("ulp");
        node.run(&[
            "ip",
            "link",
            "add",
            "u0",
            "type",
            "veth",
            "peer",
            "name",
            &port,
            "netns",
            self.hub.name(),
        ])?;
        self.hub
            .run(&["ip", "link", "set", &port, "master", "ul0", "up"])?;
        node.run(&["ip", "addr", "add", &format!("{address}/24"), "dev", "u0"])?;
        node.run(&["ip", "link", "set", "u0", "up"])?;
        Ok(address)
    }
}

/// TLS material made with the openssl CLI: a CA, a server certificate for the members'
/// addresses, a client certificate, and a client certificate of another CA (refused).
pub struct TlsFiles {
    dir: ScratchDir,
}

impl TlsFiles {
    /// Makes the files for members at `addresses`.
    pub fn new(addresses: &[String]) -> Result<Self> {
        let dir = ScratchDir::new("tls")?;
        let d = dir.path();
        let openssl = |args: &[&str]| -> Result<()> {
            run_ok(Command::new("openssl").args(args).current_dir(d))?;
            Ok(())
        };
        for ca in ["ca", "otherca"] {
            openssl(&[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{ca}.key"),
                "-out",
                &format!("{ca}.pem"),
                "-days",
                "2",
                "-subj",
                &format!("/CN=netns-holder test {ca}"),
            ])?;
        }
        let sans: Vec<String> = addresses.iter().map(|a| format!("IP:{a}")).collect();
        std::fs::write(
            d.join("server.ext"),
            format!(
                "subjectAltName={}\nextendedKeyUsage=serverAuth,clientAuth\n",
                sans.join(",")
            ),
        )?;
        std::fs::write(d.join("client.ext"), "extendedKeyUsage=clientAuth\n")?;
        for (name, ca, ext) in [
            ("server", "ca", "server.ext"),
            ("client", "ca", "client.ext"),
            ("wrong", "otherca", "client.ext"),
        ] {
            openssl(&[
                "req",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                &format!("{name}.key"),
                "-out",
                &format!("{name}.csr"),
                "-subj",
                &format!("/CN=netns-holder test {name}"),
            ])?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &format!("{name}.csr"),
                "-CA",
                &format!("{ca}.pem"),
                "-CAkey",
                &format!("{ca}.key"),
                "-CAcreateserial",
                "-out",
                &format!("{name}.pem"),
                "-days",
                "2",
                "-extfile",
                ext,
            ])?;
        }
        Ok(Self { dir })
    }

    /// A file of the set (`ca.pem`, `client.pem`, `client.key`, `wrong.pem` ...).
    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `[cluster]` lines for these files, with the client certificate `client` or `wrong`.
    pub fn cluster_lines(&self, client: &str) -> String {
        format!(
            "etcd_ca = \"{}\"\netcd_cert = \"{}\"\netcd_key = \"{}\"\n",
            self.path("ca.pem").display(),
            self.path(&format!("{client}.pem")).display(),
            self.path(&format!("{client}.key")).display(),
        )
    }
}

/// One etcd member in its own namespace.
pub struct Member {
    node: Node,
    name: String,
    address: String,
    args: Vec<String>,
    data: ScratchDir,
    process: Option<ChildGuard>,
}

impl Member {
    fn log_path(&self) -> PathBuf {
        self.data.path().join("etcd.log")
    }

    fn spawn(&mut self) -> Result<()> {
        ensure!(
            self.process.is_none(),
            "member {} already running",
            self.name
        );
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path())?;
        let mut command = Command::new("nsenter");
        command
            .arg(format!("--net={}", self.node.netns_path().display()))
            .arg("--")
            .arg(etcd_binary())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log);
        self.process = Some(ChildGuard::spawn(&mut command)?);
        Ok(())
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }
}

/// An etcd cluster of members on an [`Underlay`].
pub struct EtcdCluster {
    members: Vec<Member>,
    scheme: &'static str,
}

impl EtcdCluster {
    /// Starts `n` members at `<prefix>.<first_host + i>` (client port 2379, peers 2380),
    /// client TLS with client certificates when `tls` is given, and waits until each
    /// answers.
    pub fn start(
        underlay: &Underlay,
        n: usize,
        first_host: u8,
        tls: Option<&TlsFiles>,
    ) -> Result<Self> {
        ensure!(
            etcd_binary().is_file(),
            "{} not found: install Debian's etcd-server (make deps)",
            etcd_binary().display()
        );
        let scheme = if tls.is_some() { "https" } else { "http" };
        let token = unique_name("etcd");
        let hosts: Vec<u8> = (0..n).map(|i| first_host + i as u8).collect();
        let initial: Vec<String> = hosts
            .iter()
            .enumerate()
            .map(|(i, h)| format!("m{i}=http://{}:2380", underlay.address(*h)))
            .collect();
        let mut members = Vec::new();
        for (i, host) in hosts.iter().enumerate() {
            let node = Node::new()?;
            let address = underlay.attach(&node, *host)?;
            let data = ScratchDir::new("etcd")?;
            let name = format!("m{i}");
            let mut args = vec![
                format!("--name={name}"),
                format!("--data-dir={}", data.path().join("data").display()),
                format!("--listen-client-urls={scheme}://{address}:2379"),
                format!("--advertise-client-urls={scheme}://{address}:2379"),
                format!("--listen-peer-urls=http://{address}:2380"),
                format!("--initial-advertise-peer-urls=http://{address}:2380"),
                format!("--initial-cluster={}", initial.join(",")),
                "--initial-cluster-state=new".to_string(),
                format!("--initial-cluster-token={token}"),
                "--heartbeat-interval=50".to_string(),
                "--election-timeout=500".to_string(),
                "--logger=zap".to_string(),
            ];
            if let Some(tls) = tls {
                args.extend([
                    format!("--cert-file={}", tls.path("server.pem").display()),
                    format!("--key-file={}", tls.path("server.key").display()),
                    format!("--trusted-ca-file={}", tls.path("ca.pem").display()),
                    "--client-cert-auth".to_string(),
                ]);
            }
            let mut member = Member {
                node,
                name,
                address,
                args,
                data,
                process: None,
            };
            member.spawn()?;
            members.push(member);
        }
        let cluster = Self { members, scheme };
        cluster.wait_ready(underlay, Duration::from_secs(30))?;
        Ok(cluster)
    }

    /// Waits until every running member's client port accepts connections and the cluster
    /// has a leader (a write through the first member succeeds is not needed: the daemons
    /// retry).
    pub fn wait_ready(&self, underlay: &Underlay, timeout: Duration) -> Result<()> {
        for m in self.members.iter().filter(|m| m.process.is_some()) {
            let to: std::net::SocketAddr = format!("{}:2379", m.address).parse()?;
            let ok = wait_until(timeout, || {
                in_netns_thread(&underlay.hub().netns_path(), move || {
                    Ok(
                        std::net::TcpStream::connect_timeout(&to, Duration::from_millis(200))
                            .is_ok(),
                    )
                })
                .unwrap_or(false)
            });
            if !ok {
                bail!("etcd member {} not listening; log:\n{}", m.name, m.log());
            }
        }
        Ok(())
    }

    /// The client URLs.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|m| format!("{}://{}:2379", self.scheme, m.address))
            .collect()
    }

    /// `etcd_endpoints = [...]` for a `[cluster]` section.
    pub fn endpoints_line(&self) -> String {
        let quoted: Vec<String> = self
            .endpoints()
            .iter()
            .map(|e| format!("\"{e}\""))
            .collect();
        format!("etcd_endpoints = [{}]\n", quoted.join(", "))
    }

    /// SIGKILLs member `i`.
    pub fn kill(&mut self, i: usize) {
        self.members[i].process = None;
    }

    /// Starts member `i` again on its data.
    pub fn restart(&mut self, i: usize) -> Result<()> {
        self.members[i].spawn()
    }

    /// Member `i`'s log.
    pub fn log(&self, i: usize) -> String {
        self.members[i].log()
    }
}

/// Runs `f` on a fresh single-threaded tokio runtime on a thread inside `netns`.
pub fn block_on_in<T, F, Fut>(netns: &Path, f: F) -> Result<T>
where
    T: Send,
    F: FnOnce() -> Fut + Send,
    Fut: std::future::Future<Output = Result<T>>,
{
    in_netns_thread(netns, move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("test runtime")?
            .block_on(f())
    })
}

/// A `[cluster]` section's parsed form for test-side clients.
pub fn cluster_config(body: &str) -> Result<netns_holder_core::cluster::ClusterConfig> {
    let config = netns_holder_core::config::Config::from_toml_str(
        &format!("[cluster]\n{body}"),
        "<test cluster>",
    )?;
    config.cluster.context("no [cluster] section")
}
