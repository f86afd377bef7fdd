//! Property-based fuzzing (proptest) of every parser that reads outside input, apart from
//! the ttRPC and mux decoders (`fuzz.rs`): pod names and ids, the daemon's config file,
//! `--publish` port specs and the API's port messages, `--annotation` arguments, the
//! `netns-holder.io/` pod options of NRI sandboxes, the OCI state the hook reads, the CNI
//! configuration, environment and `CNI_ARGS`, the netns-holder command line and the API's
//! request validators.
//!
//! Inputs are mutations of the corpus in `tests/fuzz-corpus/<target>/` (see its README),
//! arbitrary bytes or strings, and generated valid inputs whose round trip is checked. The
//! properties are in `fuzzing/mod.rs`. Each target runs [`DEFAULT_CASES`] cases (quick, for
//! `make test`); `FUZZ_CASES` (or `PROPTEST_CASES`) raises that and `FUZZ_SECONDS` bounds
//! each target's time, as `make fuzz` does.

mod fuzzing;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use fuzzing::{Verdict, fuzz};
use netns_holder_client::api::pb;
use netns_holder_core::ports::{PortMapping, Protocol};
use proptest::prelude::*;

/// Cases per target without `FUZZ_CASES`.
const DEFAULT_CASES: u32 = 1000;

#[test]
fn fuzz_pod_names() {
    let names = prop_oneof![
        4 => fuzzing::bytes_like("pod-name"),
        1 => any::<String>().prop_map(String::into_bytes),
        1 => "[a-z.]{0,3}[\\x00-\\x20/.]?[a-z0-9.\\-_]{0,300}".prop_map(String::into_bytes),
    ];
    fuzz("pod-name", DEFAULT_CASES, names, |bytes| {
        fuzzing::check_pod_name(&bytes)
    });
}

#[test]
fn fuzz_pod_ids() {
    let ids = prop_oneof!["[0-9a-f]{16}", "[0-9a-fA-Z]{15,17}", any::<String>(),];
    fuzz("pod-id", DEFAULT_CASES, ids, |id| {
        fuzzing::check_pod_id(&id)
    });
}

/// A valid IPv4 network with a prefix of at most 30 (what a pod CIDR may be).
fn v4_net() -> impl Strategy<Value = ipnet::Ipv4Net> {
    (any::<u32>(), 0u8..=30).prop_map(|(addr, prefix)| {
        ipnet::Ipv4Net::new(Ipv4Addr::from(addr), prefix)
            .expect("prefix <= 32")
            .trunc()
    })
}

fn v6_net() -> impl Strategy<Value = ipnet::Ipv6Net> {
    (any::<u128>(), 0u8..=126).prop_map(|(addr, prefix)| {
        ipnet::Ipv6Net::new(Ipv6Addr::from(addr), prefix)
            .expect("prefix <= 128")
            .trunc()
    })
}

#[test]
fn fuzz_config_toml() {
    fuzz(
        "config-toml",
        DEFAULT_CASES,
        fuzzing::bytes_like("config-toml"),
        |bytes| fuzzing::check_config(&bytes),
    );
}

/// The ranges the daemon refuses as pod CIDRs (netns_holder_core::config).
const SPECIAL_PURPOSE: [&str; 8] = [
    "0.0.0.0/8",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "224.0.0.0/4",
    "240.0.0.0/4",
    "::/127",
    "fe80::/10",
    "ff00::/8",
];

#[test]
fn config_cidrs_round_trip() {
    // Any network a pod CIDR may be is accepted as written and read back unchanged; the
    // same address with host bits set is refused naming the key and the network.
    let strategy = (v4_net(), prop::option::of(v6_net()), any::<u32>());
    fuzz(
        "config-cidrs",
        DEFAULT_CASES,
        strategy,
        |(v4, v6, noise)| {
            let mut text = format!("pod_cidr_v4 = \"{v4}\"\n");
            if let Some(v6) = v6 {
                text.push_str(&format!("pod_cidr_v6 = \"{v6}\"\n"));
            }
            // Networks overlapping a special-purpose range (loopback, link-local, multicast,
            // ...) must be refused naming the key; every other one must round-trip.
            let special = |net: ipnet::IpNet| {
                SPECIAL_PURPOSE.iter().any(|r| {
                    let r: ipnet::IpNet = r.parse().expect("range");
                    r.contains(&net.network()) || net.contains(&r.network())
                })
            };
            let refused_key = if special(ipnet::IpNet::V4(v4)) {
                Some("pod_cidr_v4")
            } else if v6.is_some_and(|v6| special(ipnet::IpNet::V6(v6))) {
                Some("pod_cidr_v6")
            } else {
                None
            };
            if let Some(key) = refused_key {
                let err = netns_holder_core::config::Config::from_toml_str(&text, "<fuzz>")
                    .err()
                    .ok_or_else(|| {
                        TestCaseError::fail(format!("{text}: special-purpose accepted"))
                    })?
                    .to_string();
                prop_assert!(err.contains(key) && err.contains("overlaps"), "{}", err);
                return fuzzing::check_config(text.as_bytes());
            }
            let config = netns_holder_core::config::Config::from_toml_str(&text, "<fuzz>")
                .map_err(|e| TestCaseError::fail(format!("{text}: {e}")))?;
            prop_assert_eq!(config.pod_cidr_v4, v4);
            prop_assert_eq!(config.pod_cidr_v6, v6);
            let host_bits = u32::MAX
                .checked_shr(u32::from(v4.prefix_len()))
                .unwrap_or(0);
            if host_bits != 0 && noise & host_bits != 0 {
                let addr = Ipv4Addr::from(u32::from(v4.network()) | (noise & host_bits));
                let bad = format!("pod_cidr_v4 = \"{addr}/{}\"", v4.prefix_len());
                let err = netns_holder_core::config::Config::from_toml_str(&bad, "<fuzz>")
                    .err()
                    .ok_or_else(|| TestCaseError::fail(format!("{bad} accepted")))?
                    .to_string();
                prop_assert!(
                    err.contains("pod_cidr_v4") && err.contains(&v4.to_string()),
                    "{}",
                    err
                );
            }
            fuzzing::check_config(text.as_bytes())
        },
    );
}

fn host_ip() -> impl Strategy<Value = Option<IpAddr>> {
    prop_oneof![
        Just(None),
        any::<[u8; 4]>().prop_map(|o| Some(IpAddr::V4(Ipv4Addr::from(o)))),
        any::<[u16; 8]>().prop_map(|s| Some(IpAddr::V6(Ipv6Addr::from(s)))),
        any::<[u8; 4]>().prop_map(|o| Some(IpAddr::V6(Ipv4Addr::from(o).to_ipv6_mapped()))),
        Just(Some(IpAddr::V4(Ipv4Addr::UNSPECIFIED))),
        Just(Some(IpAddr::V6(Ipv6Addr::UNSPECIFIED))),
    ]
}

fn protocol() -> impl Strategy<Value = Protocol> {
    prop_oneof![
        Just(Protocol::Tcp),
        Just(Protocol::Udp),
        Just(Protocol::Sctp)
    ]
}

/// A spec in `--publish` syntax for the given parts.
fn render_spec(
    ip: Option<IpAddr>,
    host: (u16, u16),
    container: (u16, u16),
    proto: Protocol,
) -> String {
    let range = |(a, b): (u16, u16)| {
        if a == b {
            a.to_string()
        } else {
            format!("{a}-{b}")
        }
    };
    let ip = match ip {
        None => String::new(),
        Some(IpAddr::V4(v4)) => format!("{v4}:"),
        Some(IpAddr::V6(v6)) => format!("[{v6}]:"),
    };
    format!("{ip}{}:{}/{proto}", range(host), range(container))
}

#[test]
fn fuzz_publish_specs() {
    let specs = prop_oneof![
        3 => fuzzing::text_like("publish").prop_map(|s| vec![s]),
        1 => prop::collection::vec(fuzzing::text_like("publish"), 0..4),
        1 => "[0-9\\[\\]a-f:.\\-/]{0,40}(/(tcp|udp|sctp|icmp))?".prop_map(|s| vec![s]),
    ];
    fuzz("publish", DEFAULT_CASES, specs, |specs| {
        fuzzing::check_publish(&specs)
    });
}

#[test]
fn publish_specs_round_trip() {
    let strategy = (host_ip(), 1u16..=65535, 1u16..=65535, 0u16..64, protocol());
    fuzz(
        "publish-round-trip",
        DEFAULT_CASES,
        strategy,
        |(ip, h, c, extra, proto)| {
            let extra = extra.min(65535 - h).min(65535 - c);
            let spec = render_spec(ip, (h, h + extra), (c, c + extra), proto);
            let refused_ip = ip.is_some_and(|ip| match ip {
                IpAddr::V4(v4) => v4.is_multicast() || v4.is_broadcast(),
                IpAddr::V6(v6) => v6.is_multicast() || v6.to_ipv4_mapped().is_some(),
            });
            match netns_holder_core::ports::parse_publish(&spec) {
                Ok(mappings) => {
                    prop_assert!(!refused_ip, "{spec} accepted");
                    let expected: Vec<PortMapping> = (0..=extra)
                        .map(|i| PortMapping {
                            host_ip: ip,
                            host_port: h + i,
                            container_port: c + i,
                            protocol: proto,
                        })
                        .collect();
                    prop_assert_eq!(mappings, expected);
                }
                Err(e) => prop_assert!(refused_ip, "{spec}: {e}"),
            }
            fuzzing::check_publish(&[spec])
        },
    );
}

fn port_message() -> impl Strategy<Value = pb::PortMapping> {
    let port = prop_oneof![0u32..=3, 65534u32..=65537, any::<u32>(), 1u32..=65535];
    let ip = prop_oneof![
        Just(String::new()),
        Just("0.0.0.0".to_string()),
        Just("::".to_string()),
        Just("224.0.0.1".to_string()),
        Just("[fd00::1]".to_string()),
        any::<[u8; 4]>().prop_map(|o| Ipv4Addr::from(o).to_string()),
        "[0-9a-f:.\\[\\]]{0,20}",
    ];
    (prop_oneof![0i32..=3, any::<i32>()], ip, port.clone(), port).prop_map(
        |(protocol, host_ip, host_port, container_port)| pb::PortMapping {
            protocol,
            host_ip,
            host_port,
            container_port,
        },
    )
}

#[test]
fn fuzz_port_messages() {
    let messages = prop::collection::vec(port_message(), 0..6);
    fuzz("port-messages", DEFAULT_CASES, messages, |m| {
        fuzzing::check_port_messages(&m)
    });
}

#[test]
fn fuzz_cli_annotations() {
    let args = prop_oneof![
        3 => fuzzing::text_like("cli-annotations")
            .prop_map(|text| text.split('\n').map(str::to_string).collect::<Vec<_>>()),
        1 => prop::collection::vec("[a-c=]{0,4}", 0..5),
        1 => prop::collection::vec(any::<String>(), 0..3),
    ];
    fuzz("cli-annotations", DEFAULT_CASES, args, |args| {
        fuzzing::check_cli_annotations(&args)
    });
}

fn annotation_key() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("netns-holder.io/skip".to_string()),
        Just("netns-holder.io/name".to_string()),
        Just("netns-holder.io/".to_string()),
        "netns-holder\\.io/[a-z\\-]{0,8}",
        "[a-z.\\-/]{0,20}",
        any::<String>(),
    ]
}

fn annotation_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("true".to_string()),
        Just("false".to_string()),
        "[a-z0-9.\\-_]{1,20}",
        fuzzing::text_like("pod-name"),
        any::<String>(),
    ]
}

#[test]
fn fuzz_pod_options() {
    let annotations = prop_oneof![
        3 => prop::collection::btree_map(annotation_key(), annotation_value(), 0..6),
        1 => fuzzing::bytes_like("pod-options").prop_map(|bytes| {
            serde_json::from_slice::<BTreeMap<String, String>>(&bytes).unwrap_or_default()
        }),
    ];
    fuzz("pod-options", DEFAULT_CASES, annotations, |a| {
        fuzzing::check_pod_options(&a)
    });
}

#[test]
fn fuzz_nri_sandboxes() {
    let text = || {
        prop_oneof![
            fuzzing::text_like("pod-name"),
            any::<String>(),
            "[a-f0-9]{0,64}"
        ]
    };
    let netns = prop::option::of(prop_oneof![
        Just("/var/run/netns/cni-1".to_string()),
        Just(String::new()),
        "[a-z/.]{0,20}",
        any::<String>(),
    ]);
    let fields = (
        text(),
        text(),
        text(),
        text(),
        prop::collection::btree_map(annotation_key(), annotation_value(), 0..4),
        netns,
    )
        .prop_map(
            |(id, name, namespace, uid, annotations, netns)| fuzzing::SandboxFields {
                id,
                name,
                namespace,
                uid,
                annotations,
                netns,
            },
        );
    fuzz("nri-sandbox", DEFAULT_CASES, fields, |f| {
        fuzzing::check_sandbox(&f)
    });
}

#[test]
fn fuzz_oci_state() {
    fuzz(
        "oci-state",
        DEFAULT_CASES,
        fuzzing::bytes_like("oci-state"),
        |bytes| fuzzing::check_oci_state(&bytes),
    );
}

#[test]
fn oci_state_fields() {
    // Structured states: every field of the right JSON type, hostile values.
    let strategy = (
        prop_oneof![Just(String::new()), fuzzing::text_like("pod-name")],
        prop_oneof![
            Just("creating"),
            Just("created"),
            Just("running"),
            Just("stopped")
        ],
        prop::option::of(any::<i32>()),
        prop::collection::btree_map(annotation_key(), annotation_value(), 0..4),
    );
    fuzz(
        "oci-state-fields",
        DEFAULT_CASES,
        strategy,
        |(id, status, pid, annotations)| {
            let state = serde_json::json!({
                "ociVersion": "1.0.2", "id": id, "status": status, "pid": pid,
                "bundle": "/b", "annotations": annotations,
            });
            let verdict = fuzzing::check_oci_state(
                &serde_json::to_vec(&state).map_err(|e| TestCaseError::fail(e.to_string()))?,
            )?;
            if let Verdict::Refused(message) = &verdict {
                prop_assert!(
                    !message.contains("is invalid"),
                    "a well-typed state failed to parse: {message}"
                );
            }
            Ok(verdict)
        },
    );
}

#[test]
fn fuzz_cni_conf() {
    fuzz(
        "cni-conf",
        DEFAULT_CASES,
        fuzzing::bytes_like("cni-conf"),
        |bytes| fuzzing::check_cni_conf(&bytes),
    );
}

#[test]
fn fuzz_cni_args() {
    let text = prop_oneof![
        3 => fuzzing::text_like("cni-args"),
        1 => "([A-Z_]{0,6}=?[a-z0-9./]{0,6};?){0,4}",
    ];
    fuzz("cni-args", DEFAULT_CASES, text, |t| {
        fuzzing::check_cni_args(&t)
    });
}

#[test]
fn cni_args_round_trip() {
    let pairs = prop::collection::btree_map("[A-Za-z_][A-Za-z0-9_]{0,8}", "[^;]{0,12}", 0..5);
    fuzz("cni-args-round-trip", DEFAULT_CASES, pairs, |pairs| {
        let text = pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";");
        let parsed = cri_hook::cni::wire::parse_cni_args(&text)
            .map_err(|e| TestCaseError::fail(format!("{text:?}: {e}")))?;
        prop_assert_eq!(&parsed, &pairs);
        fuzzing::check_cni_args(&text)
    });
}

#[test]
fn fuzz_cni_env() {
    let value = || {
        prop::option::of(prop_oneof![
            Just(String::new()),
            fuzzing::text_like("pod-name"),
            fuzzing::text_like("cni-args"),
            "/[a-z/.]{0,16}",
        ])
    };
    let command = prop::option::of(prop_oneof![
        Just("ADD".to_string()),
        Just("DEL".to_string()),
        Just("CHECK".to_string()),
        Just("GC".to_string()),
        Just("STATUS".to_string()),
        Just("VERSION".to_string()),
        "[A-Za-z]{0,7}",
    ]);
    let strategy = (command, value(), value(), value(), value());
    fuzz(
        "cni-env",
        DEFAULT_CASES,
        strategy,
        |(command, id, netns, ifname, args)| {
            let mut vars = BTreeMap::new();
            for (key, value) in [
                ("CNI_COMMAND", command),
                ("CNI_CONTAINERID", id),
                ("CNI_NETNS", netns),
                ("CNI_IFNAME", ifname),
                ("CNI_ARGS", args),
            ] {
                if let Some(value) = value {
                    vars.insert(key.to_string(), value);
                }
            }
            fuzzing::check_cni_env(&vars)
        },
    );
}

/// Tokens the netns-holder command line knows, mixed with hostile values.
fn cli_token() -> impl Strategy<Value = String> {
    let words = [
        "pod",
        "create",
        "attach",
        "rm",
        "ls",
        "inspect",
        "spec",
        "exec",
        "check",
        "gc",
        "status",
        "reload",
        "peer",
        "add",
        "--json",
        "--netns",
        "--annotation",
        "--publish",
        "-p",
        "--keep",
        "--repair",
        "--no-pause",
        "--socket",
        "--out",
        "--rootfs",
        "--force",
        "--",
        "-v",
        "web",
        "8080:80",
        "k=v",
        "/proc/1/ns/net",
        "10.244.1.0/24",
        "192.168.50.2",
    ];
    prop_oneof![
        3 => prop::sample::select(words.to_vec()).prop_map(str::to_string),
        1 => fuzzing::text_like("pod-name"),
        1 => fuzzing::text_like("publish"),
    ]
}

#[test]
fn fuzz_cli_argv() {
    let argv = prop_oneof![
        3 => prop::collection::vec(cli_token(), 0..8),
        1 => fuzzing::bytes_like("cli-argv").prop_map(|bytes| {
            serde_json::from_slice::<Vec<String>>(&bytes).unwrap_or_default()
        }),
    ];
    fuzz("cli-argv", DEFAULT_CASES, argv, |argv| {
        fuzzing::check_cli_argv(&argv)
    });
}

#[test]
fn fuzz_api_strings() {
    let netns = prop_oneof![Just(String::new()), "/?[a-z/.]{0,20}", any::<String>()];
    let cidr = prop_oneof![
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}/[0-9]{1,2}",
        "[0-9a-f:]{0,20}/[0-9]{1,3}",
        any::<String>()
    ];
    let via = prop_oneof![
        "[0-9]{1,3}(\\.[0-9]{1,3}){3}",
        "[0-9a-f:]{0,20}",
        any::<String>()
    ];
    fuzz(
        "api-strings",
        DEFAULT_CASES,
        (netns, cidr, via),
        |(n, c, v)| fuzzing::check_api_strings(&n, &c, &v),
    );
}
