//! Tests of the command line: parsing, output formats and exit codes.

use super::*;
use clap::CommandFactory;

#[test]
fn cli_definition_is_consistent() {
    Cli::command().debug_assert();
}

#[test]
fn exec_takes_everything_after_the_name() {
    let cli = Cli::try_parse_from(["nh", "exec", "web", "--", "ip", "-br", "a"]).unwrap();
    let Command::Client(ClientCommand::Exec(args)) = cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(args.name, "web");
    assert_eq!(args.command, ["ip", "-br", "a"]);
    assert!(Cli::try_parse_from(["nh", "exec", "web"]).is_err());
}

#[test]
fn pod_spec_takes_the_command_after_dashes() {
    let cli = Cli::try_parse_from([
        "nh", "pod", "spec", "web", "--out", "/b", "--", "/bin/sh", "-c", "x",
    ])
    .unwrap();
    let Command::Client(ClientCommand::Pod(PodCommand::Spec(args))) = cli.command else {
        panic!("{cli:?}")
    };
    assert_eq!(args.name, "web");
    assert_eq!(args.out, Path::new("/b"));
    assert_eq!(args.rootfs, Path::new("rootfs"));
    assert_eq!(args.command, ["/bin/sh", "-c", "x"]);
    assert!(Cli::try_parse_from(["nh", "pod", "spec", "web"]).is_err());
}

#[test]
fn global_socket_and_gc_keep() {
    let cli = Cli::try_parse_from(["nh", "gc", "--keep", "a", "b", "--socket", "/tmp/s"]).unwrap();
    assert_eq!(cli.client_socket(), Path::new("/tmp/s"));
    let Command::Client(ClientCommand::Gc { keep }) = cli.command else {
        panic!()
    };
    assert_eq!(keep, ["a", "b"]);
    let cli = Cli::try_parse_from(["nh", "status"]).unwrap();
    assert_eq!(cli.client_socket(), Path::new(DEFAULT_SOCKET));
}

#[test]
fn publish_and_peer_arguments() {
    let cli = Cli::try_parse_from([
        "nh",
        "pod",
        "create",
        "web",
        "--publish",
        "8080:80",
        "-p",
        "[fd00::1]:53:53/udp",
    ])
    .unwrap();
    let Command::Client(ClientCommand::Pod(PodCommand::Create { publish, .. })) = cli.command
    else {
        panic!()
    };
    assert_eq!(publish, ["8080:80", "[fd00::1]:53:53/udp"]);
    assert_eq!(ports::parse_publish_all(&publish).unwrap().len(), 2);
    let cli = Cli::try_parse_from(["nh", "peer", "add", "10.244.1.0/24", "192.168.50.2"]).unwrap();
    assert!(matches!(
        cli.command,
        Command::Client(ClientCommand::Peer(PeerCommand::Add { .. }))
    ));
    let err = peer_args("10.244.1.0", "1.2.3.4").unwrap_err();
    assert!(err.to_string().contains("\"10.244.1.0\""), "{err}");
    assert!(Cli::try_parse_from(["nh", "reload"]).is_ok());
}

#[test]
fn annotations() {
    let a = parse_annotations(&["k=v".into(), "x=a=b".into(), "e=".into()]).unwrap();
    assert_eq!(a["k"], "v");
    assert_eq!(a["x"], "a=b");
    assert_eq!(a["e"], "");
    for (bad, why) in [("novalue", "KEY=VALUE"), ("=v", "key is empty")] {
        let err = parse_annotations(&[bad.into()]).unwrap_err();
        assert!(err.to_string().contains(why), "{err}");
        assert!(err.to_string().contains(bad), "{err}");
    }
    let err = parse_annotations(&["k=1".into(), "k=2".into()]).unwrap_err();
    assert!(err.to_string().contains("more than once"), "{err}");
}

#[test]
fn table_aligns_columns() {
    let name = PodName::new("web").unwrap();
    let pod = PodInfo {
        id: name.id(),
        host_veth: name.id().host_veth_name(),
        name,
        netns: PathBuf::from("/run/netns/web"),
        pause_pid: None,
        ips: vec!["10.88.0.2/16".parse().unwrap()],
        gateways: vec![],
        interface: crate::names::IfName::pod_interface(),
        ports: vec![],
        ports_released: false,
    };
    let table = pod_table(&[pod]);
    let lines: Vec<&str> = table.lines().collect();
    assert_eq!(lines.len(), 2);
    assert!(lines[0].starts_with("NAME  ID "), "{table}");
    assert!(lines[1].contains("10.88.0.2/16"), "{table}");
    assert!(lines[1].contains("  -  "), "{table}");
    assert_eq!(lines[0].find("IPS"), lines[1].find("10.88"), "{table}");
}
