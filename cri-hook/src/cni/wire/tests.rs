//! Tests of the CNI wire formats: environment, configuration, port mappings as runtimes send
//! them (Go field names included), results and error objects.

use super::*;

fn env(vars: &[(&str, &str)]) -> Result<Env, CniError> {
    let vars: BTreeMap<String, String> = vars
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    Env::from_lookup(|k| vars.get(k).cloned())
}

#[test]
fn environment() {
    let e = env(&[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "abc"),
        ("CNI_NETNS", "/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=web",
        ),
    ])
    .unwrap();
    assert_eq!(e.command, Command::Add);
    assert_eq!(e.require_container_id().unwrap(), "abc");
    assert_eq!(e.args["K8S_POD_NAME"], "web");
    let err = env(&[]).unwrap_err();
    assert_eq!(err.code, code::INVALID_ENV);
    assert!(err.msg.contains("CNI_COMMAND"), "{err}");
    let err = env(&[("CNI_COMMAND", "FROB")]).unwrap_err();
    assert!(err.msg.contains("FROB"), "{err}");
    let err = env(&[("CNI_COMMAND", "ADD"), ("CNI_NETNS", "rel")]).unwrap_err();
    assert!(err.msg.contains("absolute"), "{err}");
    let err = env(&[("CNI_COMMAND", "DEL"), ("CNI_ARGS", "novalue")]).unwrap_err();
    assert!(err.msg.contains("novalue"), "{err}");
    let del = env(&[("CNI_COMMAND", "DEL")]).unwrap();
    let err = del.require_container_id().unwrap_err();
    assert!(err.msg.contains("CNI_CONTAINERID"), "{err}");
    assert!(err.msg.contains("DEL"), "{err}");
}

#[test]
fn configuration() {
    let conf = NetConf::parse(
        br#"{"cniVersion":"1.1.0","name":"nh","type":"netns-holder",
             "daemonSocket":"/tmp/s","ipam":{},
             "runtimeConfig":{"portMappings":[{"hostPort":8080,"containerPort":80,"protocol":"tcp"}]},
             "cni.dev/valid-attachments":[{"containerID":"a","ifname":"eth0"}]}"#,
    )
    .unwrap();
    assert_eq!(conf.daemon_socket.as_deref(), Some("/tmp/s".as_ref()));
    assert_eq!(
        conf.port_mappings().unwrap(),
        [ports::PortMapping::new(8080, 80, ports::Protocol::Tcp)]
    );
    assert_eq!(conf.gc_attachments().unwrap()[0].container_id, "a");

    let err = NetConf::parse(br#"{"cniVersion":"2.0.0","name":"n"}"#).unwrap_err();
    assert_eq!(err.code, code::INCOMPATIBLE_VERSION);
    assert!(err.msg.contains("2.0.0"), "{err}");
    let err = NetConf::parse(b"not json").unwrap_err();
    assert_eq!(err.code, code::DECODE);
    let err = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"","type":"t"}"#).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    let err = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n"}"#).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("no type"), "{err}");
    let err = NetConf::parse(br#"{"cniVersion":"1.0.0","name":"n","type":""}"#).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(err.msg.contains("type is empty"), "{err}");
    assert_eq!(answer_version(br#"{"cniVersion":"0.4.0"}"#), "0.4.0");
    assert_eq!(answer_version(br#"{"cniVersion":"9"}"#), CURRENT_VERSION);
    assert_eq!(answer_version(b"{"), CURRENT_VERSION);
}

#[test]
fn the_error_version_is_the_requested_one_whatever_else_is_wrong() {
    // Invalid UTF-8 in a field NetConf skips, and in the name.
    let mut bytes = br#"{"cniVersion":"0.4.0","name":"n","type":"t","x":"#.to_vec();
    bytes.extend_from_slice(b"\"\xff\xfe\"}");
    assert_eq!(answer_version(&bytes), "0.4.0");
    let mut bytes = br#"{"cniVersion":"1.0.0","name":""#.to_vec();
    bytes.extend_from_slice(b"\xc3\x28\",\"type\":\"t\"}");
    assert!(NetConf::parse(&bytes).is_err());
    assert_eq!(answer_version(&bytes), "1.0.0");
    // Other fields of the wrong type, truncated or broken JSON.
    assert_eq!(
        answer_version(br#"{"cniVersion":"0.3.1","name":["x"],"runtimeConfig":"x"}"#),
        "0.3.1"
    );
    assert_eq!(
        answer_version(br#"{"cniVersion": "0.3.0", "name": "n", "ty"#),
        "0.3.0"
    );
    assert_eq!(
        answer_version(br#"{name: x, "cniVersion" : "1.0.0"}"#),
        "1.0.0"
    );
    // Unsupported, escaped or not a string: the newest.
    assert_eq!(answer_version(br#"{"cniVersion":"9.9.9""#), CURRENT_VERSION);
    assert_eq!(
        answer_version(br#"{"cniVersion":"1.0\u002e0""#),
        CURRENT_VERSION
    );
    assert_eq!(answer_version(br#"{"cniVersion":1.0,"#), CURRENT_VERSION);
    assert_eq!(answer_version(b"\xff\xff"), CURRENT_VERSION);
    assert_eq!(answer_version(b""), CURRENT_VERSION);
}

fn mappings(json: Value) -> Result<Vec<ports::PortMapping>, CniError> {
    let mut conf = json!({"cniVersion": "1.1.0", "name": "n", "type": "netns-holder"});
    conf["runtimeConfig"] = json!({ "portMappings": json });
    NetConf::parse(conf.to_string().as_bytes())
        .unwrap()
        .port_mappings()
}

#[test]
fn port_mappings_are_read_like_the_portmap_plugin() {
    use ports::{PortMapping, Protocol};
    assert_eq!(
        mappings(json!([
            {"hostPort": 8080, "containerPort": 80},
            {"hostPort": 53, "containerPort": 5353, "protocol": "UDP", "hostIP": ""},
            {"hostPort": 9, "containerPort": 9, "protocol": "sctp", "hostIP": "10.0.0.1"},
            {"hostPort": 8443, "containerPort": 443, "protocol": "", "hostIP": "fd00::1", "extra": 1},
        ]))
        .unwrap(),
        [
            PortMapping::new(8080, 80, Protocol::Tcp),
            PortMapping::new(53, 5353, Protocol::Udp),
            PortMapping::new(9, 9, Protocol::Sctp).on("10.0.0.1".parse().unwrap()),
            PortMapping::new(8443, 443, Protocol::Tcp).on("fd00::1".parse().unwrap()),
        ]
    );
    assert_eq!(mappings(json!([])).unwrap(), []);
    assert_eq!(mappings(Value::Null).unwrap(), []);
}

/// `runtimeConfig.portMappings` given as raw JSON text (member order and duplicate keys
/// kept, which `json!` would not).
fn raw_mappings(list: &str) -> Result<Vec<ports::PortMapping>, CniError> {
    let conf = format!(
        r#"{{"cniVersion":"1.1.0","name":"n","type":"netns-holder","runtimeConfig":{{"portMappings":{list}}}}}"#
    );
    NetConf::parse(conf.as_bytes()).unwrap().port_mappings()
}

#[test]
fn containerd_go_field_names_are_read() {
    use ports::{PortMapping, Protocol};
    // The stdin of containerd 2.3.4's ADD in tests/captures/containerd-2.3.4/cni/
    // 12-multiport-runp-ADD.json, byte for byte.
    let stdin = br#"{"capabilities":{"portMappings":true},"cniVersion":"1.1.0","daemonSocket":"/run/netns-holder/api.sock","name":"netns-holder","runtimeConfig":{"portMappings":[{"HostPort":18083,"ContainerPort":8080,"Protocol":"tcp","HostIP":""},{"HostPort":15353,"ContainerPort":5353,"Protocol":"udp","HostIP":""},{"HostPort":18084,"ContainerPort":8081,"Protocol":"tcp","HostIP":"192.0.2.2"}]},"type":"netns-holder"}"#;
    assert_eq!(
        NetConf::parse(stdin).unwrap().port_mappings().unwrap(),
        [
            PortMapping::new(18083, 8080, Protocol::Tcp),
            PortMapping::new(15353, 5353, Protocol::Udp),
            PortMapping::new(18084, 8081, Protocol::Tcp).on("192.0.2.2".parse().unwrap()),
        ]
    );
    // Our own camelCase spelling reads the same.
    assert_eq!(
        raw_mappings(r#"[{"hostPort":18083,"containerPort":8080,"protocol":"tcp","hostIP":""}]"#)
            .unwrap(),
        [PortMapping::new(18083, 8080, Protocol::Tcp)]
    );
}

#[test]
fn keys_match_in_any_casing_as_in_go() {
    use ports::{PortMapping, Protocol};
    for entry in [
        r#"{"HOSTPORT":53,"containerport":5353,"PrOtOcOl":"UDP","hostip":"10.0.0.1"}"#,
        r#"{"hostport":53,"CONTAINERPORT":5353,"PROTOCOL":"udp","HOSTIP":"10.0.0.1"}"#,
        r#"{"HostPort":53,"containerPort":5353,"protocol":"Udp","HostIp":"10.0.0.1"}"#,
        // U+017F folds to S in Go (its simple case-folding set is {S, s, U+017F}).
        "{\"ho\u{17f}tPort\":53,\"containerPort\":5353,\"protocol\":\"udp\",\"HO\u{17f}TIP\":\"10.0.0.1\"}",
    ] {
        assert_eq!(
            raw_mappings(&format!("[{entry}]")).unwrap(),
            [PortMapping::new(53, 5353, Protocol::Udp).on("10.0.0.1".parse().unwrap())],
            "{entry}"
        );
    }
    // Other non-ASCII characters never fold to ASCII: the key is unknown, so ignored.
    let err = raw_mappings("[{\"h\u{f3}stPort\":53,\"containerPort\":53}]").unwrap_err();
    assert!(err.msg.ends_with(": hostPort is missing"), "{err}");
    // Neither do separators (Go v1 folding keeps them).
    let err = raw_mappings(r#"[{"host_port":53,"containerPort":53}]"#).unwrap_err();
    assert!(err.msg.ends_with(": hostPort is missing"), "{err}");
    assert!(go_fold_eq("\u{212a}", "k") && go_fold_eq("K", "\u{212a}"));
    assert!(!go_fold_eq("hostPor", "hostPort") && !go_fold_eq("\u{131}", "i"));
}

#[test]
fn duplicate_keys_of_different_case_resolve_as_in_go() {
    use ports::{PortMapping, Protocol};
    let one = |list: &str| raw_mappings(list).map(|m| m[0]);
    // The last member setting a field wins, whatever the casing of either.
    let tcp = |host, container| PortMapping::new(host, container, Protocol::Tcp);
    assert_eq!(
        one(r#"[{"hostPort":1000,"HostPort":2000,"containerPort":80}]"#).unwrap(),
        tcp(2000, 80)
    );
    assert_eq!(
        one(r#"[{"HostPort":2000,"hostPort":1000,"containerPort":80}]"#).unwrap(),
        tcp(1000, 80)
    );
    assert_eq!(
        one(r#"[{"hostPort":1,"hostPort":2,"HOSTPORT":3,"containerPort":80}]"#).unwrap(),
        tcp(3, 80)
    );
    assert_eq!(
        one(r#"[{"hostPort":53,"containerPort":53,"protocol":"udp","Protocol":"tcp"}]"#).unwrap(),
        tcp(53, 53)
    );
    assert_eq!(
        one(r#"[{"hostPort":53,"containerPort":53,"hostIP":"10.0.0.1","HostIP":""}]"#).unwrap(),
        tcp(53, 53)
    );
    // null leaves the field as it was; null alone is absent.
    assert_eq!(
        one(r#"[{"HostPort":2000,"hostPort":null,"containerPort":80}]"#).unwrap(),
        tcp(2000, 80)
    );
    let err = one(r#"[{"hostPort":null,"containerPort":80}]"#).unwrap_err();
    assert!(err.msg.ends_with(": hostPort is missing"), "{err}");
    // The range is checked on the winner, as portmap checks the decoded struct ...
    assert_eq!(
        one(r#"[{"hostPort":0,"HostPort":2000,"containerPort":80}]"#).unwrap(),
        tcp(2000, 80)
    );
    let err = one(r#"[{"HostPort":2000,"hostPort":0,"containerPort":80}]"#).unwrap_err();
    assert!(err.msg.contains("hostPort 0 is not a port number"), "{err}");
    // ... but a mistyped member fails the entry even when overridden (Go's decode fails).
    let err = one(r#"[{"HostPort":"80","hostPort":2000,"containerPort":80}]"#).unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert!(
        err.msg.contains("HostPort \"80\" is not a port number"),
        "{err}"
    );
}

#[test]
fn errors_for_go_spelled_entries_name_the_entry_as_sent() {
    let err = raw_mappings(
        r#"[{"HostPort":18081,"ContainerPort":8080,"Protocol":"tcp","HostIP":""},{"HostPort":0,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]"#,
    )
    .unwrap_err();
    assert_eq!(err.code, code::INVALID_CONFIG);
    assert_eq!(
        err.msg,
        r#"runtimeConfig.portMappings[1] {"HostPort":0,"ContainerPort":8080,"Protocol":"tcp","HostIP":""}: HostPort 0 is not a port number between 1 and 65535"#
    );
    let err = raw_mappings(r#"[{"ContainerPort":8080,"Protocol":"tcp","HostIP":""}]"#).unwrap_err();
    assert_eq!(
        err.msg,
        r#"runtimeConfig.portMappings[0] {"ContainerPort":8080,"Protocol":"tcp","HostIP":""}: hostPort is missing"#
    );
    for (entry, words) in [
        (
            r#"{"HostPort":80,"ContainerPort":80,"Protocol":"ICMP"}"#,
            "Protocol \"ICMP\" is not tcp, udp or sctp",
        ),
        (
            r#"{"HostPort":80,"ContainerPort":80,"HostIP":7}"#,
            "HostIP 7 is not a string",
        ),
        (
            r#"{"HostPort":80,"ContainerPort":80,"HostIP":"garbage"}"#,
            "not an IP address",
        ),
        (
            r#"{"HostPort":80,"ContainerPort":8.5}"#,
            "ContainerPort 8.5 is not a port number",
        ),
    ] {
        let err = raw_mappings(&format!("[{entry}]")).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG, "{entry}: {err}");
        assert!(err.msg.contains(words), "{entry}: {err}");
        assert!(err.msg.contains(entry), "{entry}: {err}");
    }
}

#[test]
fn bad_port_mappings_are_code_7_naming_the_entry() {
    for (list, words) in [
        (
            json!({"a": 1}),
            vec!["runtimeConfig.portMappings {\"a\":1} is not a list"],
        ),
        (json!([5]), vec!["portMappings[0] 5: not an object"]),
        (
            json!([{"hostPort": 80, "containerPort": 80}, {"containerPort": 80}]),
            vec!["portMappings[1] {\"containerPort\":80}: hostPort is missing"],
        ),
        (
            json!([{"hostPort": "80", "containerPort": 80}]),
            vec!["portMappings[0]", "hostPort \"80\" is not a port number"],
        ),
        (
            json!([{"hostPort": -1, "containerPort": 80}]),
            vec!["hostPort -1 is not a port number"],
        ),
        (
            json!([{"hostPort": 0, "containerPort": 80}]),
            vec!["hostPort 0 is not a port number"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 65536}]),
            vec!["containerPort 65536 is not a port number"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 8.5}]),
            vec!["containerPort 8.5"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 80, "protocol": "icmp"}]),
            vec!["protocol \"icmp\" is not tcp, udp or sctp"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 80, "protocol": 6}]),
            vec!["protocol 6 is not a string"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 80, "hostIP": "garbage"}]),
            vec!["\"garbage\"", "not an IP address"],
        ),
        (
            json!([{"hostPort": 80, "containerPort": 80, "hostIP": 1}]),
            vec!["hostIP 1 is not a string"],
        ),
        (
            json!([
                {"hostPort": 80, "containerPort": 80},
                {"hostPort": 80, "containerPort": 81, "hostIP": "10.0.0.1"}
            ]),
            vec!["claim the same host port", "tcp 80 -> 80"],
        ),
    ] {
        let err = mappings(list.clone()).unwrap_err();
        assert_eq!(err.code, code::INVALID_CONFIG, "{list}: {err}");
        for word in words {
            assert!(err.msg.contains(word), "{list}: {err}");
        }
    }
    let long = json!([{"hostPort": 0, "containerPort": 80, "pad": "p".repeat(10_000)}]);
    let err = mappings(long).unwrap_err();
    assert!(err.msg.len() < 500, "{}", err.msg.len());
    assert!(err.msg.contains("hostPort 0"), "{err}");
}

fn network() -> PodNetwork {
    PodNetwork {
        host_veth: "nh0123456789ab".into(),
        interface: "eth0".into(),
        sandbox: PathBuf::from("/run/netns/x"),
        ips: vec![
            "10.244.0.2/24".parse().unwrap(),
            "fd00::2/64".parse().unwrap(),
        ],
        gateways: vec!["10.244.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
    }
}

#[test]
fn result_shape() {
    let r = add_result("1.1.0", &network());
    assert_eq!(r["cniVersion"], "1.1.0");
    assert_eq!(r["interfaces"][0], json!({"name": "nh0123456789ab"}));
    assert_eq!(
        r["interfaces"][1],
        json!({"name": "eth0", "sandbox": "/run/netns/x"})
    );
    assert_eq!(
        r["ips"][0],
        json!({"address": "10.244.0.2/24", "gateway": "10.244.0.1", "interface": 1})
    );
    assert_eq!(r["ips"][1]["gateway"], "fd00::1");
    assert_eq!(
        r["routes"],
        json!([{"dst": "0.0.0.0/0", "gw": "10.244.0.1"}, {"dst": "::/0", "gw": "fd00::1"}])
    );
    let legacy = add_result("0.4.0", &network());
    assert_eq!(legacy["ips"][0]["version"], "4");
    assert_eq!(legacy["ips"][1]["version"], "6");
    assert_eq!(
        prev_result_addresses(&r).unwrap(),
        network().ips,
        "a result reads back"
    );
}

#[test]
fn error_object() {
    let e = CniError::new(code::DAEMON_UNREACHABLE, "daemon down").details("socket /x");
    assert_eq!(
        e.to_json("1.0.0"),
        json!({"cniVersion": "1.0.0", "code": 50, "msg": "daemon down", "details": "socket /x"})
    );
    assert!(
        CniError::new(7, "x")
            .to_json("1.1.0")
            .get("details")
            .is_none()
    );
    assert_eq!(version_info()["supportedVersions"][4], "1.1.0");
}
