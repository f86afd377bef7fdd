//! `make bench` part 3: host ports. Per-pod create latency with one published host port, at
//! 1, 100 and 1000 pods, side by side in the same run with Debian's CNI chain (`loopback` +
//! `bridge` with `host-local` IPAM + `portmap`, invoked per the CNI spec with `prevResult`
//! and `runtimeConfig.portMappings`), each in its own throwaway node namespace with an
//! outside client namespace on an underlay veth; and the first-packet latency through a
//! host port (a TCP connect from the client to the node address: the SYN is the packet that
//! goes through the NAT lookup) with 1 port published and with all of them.
//!
//! Also, in our node once all ports are published: the cost of the host port inside a
//! create (pods with and without a port, interleaved) next to one `nft -f -` element
//! change (what applying each pod's port with the nft binary would cost instead of our
//! in-process netlink batch).
//!
//! The CNI side is timed on its three plugins only (its pod namespace is made before the
//! clock starts); ours also makes the namespace and starts the pause: the comparison
//! favours CNI. `BENCH_HOSTPORT_PODS` (default 1000) sets the pod count; `BENCH_CONNECTS`
//! (default 300) the connects per latency figure.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use netns_holder_client::client::Client;
use netns_holder_core::names::PodName;
use netns_holder_core::ports::{PortMapping, Protocol};
use nh_tests::bench::{
    NetnsCleanup, Series, cni_exec, connect_latency, enter_netns, env_count, ms, us,
};
use nh_tests::node::{Daemon, DaemonOptions, Echo, Node, Proto, in_netns_thread};
use nh_tests::{ScratchDir, proc_status_field, run_ok, unique_name};

const NODE_IP: &str = "192.168.74.1";
const CLIENT_IP: &str = "192.168.74.2";
const FIRST_HOST_PORT: u16 = 20000;
/// Pods created after the main run to compare creates with and without a port.
const EXTRA_PODS: u16 = 20;

/// A node with an outside client on an underlay veth.
fn node_with_client() -> Result<(Node, Node)> {
    let node = Node::new()?;
    let client = Node::new()?;
    node.veth_to(
        &client,
        ("u0", &[&format!("{NODE_IP}/24")]),
        ("u0", &[&format!("{CLIENT_IP}/24")]),
    )?;
    Ok((node, client))
}

/// What one side measured.
struct Side {
    creates: Series,
    first_packet_1: Series,
    first_packet_n_first: Series,
    first_packet_n_last: Series,
}

/// Ours: `count` pods, each publishing one TCP port, through the API.
struct Ours {
    side: Side,
    rss_kib: u64,
    with_port: Series,
    without_port: Series,
    nft_exec: Series,
}

fn bench_ours(count: usize, connects: usize) -> Result<Ours> {
    let (node, client) = node_with_client()?;
    // The machine's neighbour tables hold this many pods only when raised (a daemon in a
    // node namespace cannot raise them and refuses pods beyond them); put back after.
    let _tables = nh_tests::neighbour::RaisedTables::for_pod_cidr("10.244.0.0/20", false)?;
    let mut daemon = Daemon::start(
        &node,
        DaemonOptions {
            pod_cidr_v4: "10.244.0.0/20".into(),
            ..DaemonOptions::default()
        },
    )?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let result = runtime.block_on(async {
        let mut client_api = Client::connect(daemon.socket()).await?;
        let mut creates = Vec::with_capacity(count);
        let mut netns = Vec::with_capacity(count);
        let mut first_packet_1 = Series::default();
        for i in 0..count {
            let name = PodName::new(format!("hp-{i}"))?;
            let port = PortMapping::new(FIRST_HOST_PORT + i as u16, 80, Protocol::Tcp);
            let start = Instant::now();
            let pod = client_api
                .create_pod_with_ports(&name, false, BTreeMap::new(), &[port])
                .await?
                .pod
                .context("pod")?;
            creates.push(start.elapsed());
            netns.push(PathBuf::from(pod.netns));
            if i == 0 {
                let _echo = Echo::start(&netns[0], Proto::Tcp, 80)?;
                first_packet_1 = connect_latency(
                    &client.netns_path(),
                    SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT),
                    connects,
                )?;
            }
        }
        let pid = daemon.pid().context("daemon pid")?;
        let rss_kib = proc_status_field(pid, "VmRSS")
            .context("daemon VmRSS")?
            .trim_end_matches(" kB")
            .trim()
            .parse::<u64>()?;
        let first = Echo::start(&netns[0], Proto::Tcp, 80)?;
        let last = Echo::start(&netns[count - 1], Proto::Tcp, 80)?;
        let first_packet_n_first = connect_latency(
            &client.netns_path(),
            SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT),
            connects,
        )?;
        let first_packet_n_last = connect_latency(
            &client.netns_path(),
            SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT + count as u16 - 1),
            connects,
        )?;
        drop((first, last));

        // The port's share of a create, at full size: with and without, interleaved (20
        // more pods: a Linux bridge takes at most 1024 ports).
        let (mut with_port, mut without_port) = (Vec::new(), Vec::new());
        for i in 0..EXTRA_PODS {
            let name = PodName::new(format!("extra-{i}"))?;
            let ports = if i % 2 == 0 {
                vec![PortMapping::new(40000 + i, 80, Protocol::Tcp)]
            } else {
                Vec::new()
            };
            let start = Instant::now();
            client_api
                .create_pod_with_ports(&name, false, BTreeMap::new(), &ports)
                .await?;
            let took = start.elapsed();
            if ports.is_empty() {
                without_port.push(took);
            } else {
                with_port.push(took);
            }
        }
        // One element added and deleted with the nft binary, in the same (full) table.
        let node_ns = node.netns_path();
        let nft_exec = in_netns_thread(&node_ns, || {
            let mut samples = Vec::new();
            for i in 0..40u16 {
                let port = 50000 + i;
                let add = format!(
                    "add element inet netns_holder hostport_any_v4 {{ tcp . {port} : 10.244.0.2 . 80 }}\n"
                );
                let start = Instant::now();
                nft_stdin(&add)?;
                samples.push(start.elapsed());
                nft_stdin(&format!(
                    "delete element inet netns_holder hostport_any_v4 {{ tcp . {port} }}\n"
                ))?;
            }
            Ok(Series(samples))
        })?;
        anyhow::Ok(Ours {
            side: Side {
                creates: Series(creates),
                first_packet_1,
                first_packet_n_first,
                first_packet_n_last,
            },
            rss_kib,
            with_port: Series(with_port),
            without_port: Series(without_port),
            nft_exec,
        })
    });
    // Tear down by killing: removing 1000 pods one by one is another benchmark
    // (bench_pods); the node namespace takes everything else with it.
    daemon.kill9();
    drop(daemon);
    result
}

/// Runs `nft -f -` with `text` (in the calling thread's network namespace).
fn nft_stdin(text: &str) -> Result<()> {
    let mut child = Command::new("nft")
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("nft")?;
    child
        .stdin
        .take()
        .context("stdin")?
        .write_all(text.as_bytes())?;
    let out = child.wait_with_output()?;
    ensure!(
        out.status.success(),
        "nft -f - failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

/// The CNI chain with portmap: per pod, loopback ADD + bridge ADD + portmap ADD.
struct Cni {
    side: Side,
    portmap: Series,
}

fn bench_cni(count: usize, connects: usize) -> Result<Cni> {
    let (node, client) = node_with_client()?;
    let scratch = ScratchDir::new("cnihp")?;
    let bridge_config = serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "nhbench",
        "type": "bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": false,
        "hairpinMode": true,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": "10.245.0.0/20"}]],
            // A default route in the pod, so replies to outside clients go via the node.
            "routes": [{"dst": "0.0.0.0/0"}],
            "dataDir": scratch.path().join("ipam"),
        },
    })
    .to_string();
    let loopback_config =
        serde_json::json!({"cniVersion": "1.0.0", "name": "nhbench-lo", "type": "loopback"})
            .to_string();
    let portmap_config = |port: u16, prev: &serde_json::Value| {
        serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "nhbench",
            "type": "portmap",
            "capabilities": {"portMappings": true},
            "runtimeConfig": {"portMappings": [
                {"hostPort": port, "containerPort": 80, "protocol": "tcp"}
            ]},
            "prevResult": prev,
        })
        .to_string()
    };
    let names: Vec<String> = (0..count).map(|_| unique_name("nhc")).collect();
    let node_path = node.netns_path();
    let client_path = client.netns_path();
    let result = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Result<Cni> {
                enter_netns(&node_path)?;
                let mut made = NetnsCleanup(Vec::new());
                let mut adds = Vec::with_capacity(count);
                let mut portmap = Vec::with_capacity(count);
                let mut first_packet_1 = Series::default();
                for (i, name) in names.iter().enumerate() {
                    run_ok(Command::new("ip").args(["netns", "add", name]))?;
                    made.0.push(name.clone());
                    let netns = PathBuf::from("/run/netns").join(name);
                    let port = FIRST_HOST_PORT + i as u16;
                    let start = Instant::now();
                    cni_exec("loopback", "ADD", name, &netns, &loopback_config)?;
                    let result = cni_exec("bridge", "ADD", name, &netns, &bridge_config)?;
                    let prev: serde_json::Value = serde_json::from_str(&result)?;
                    let before_portmap = Instant::now();
                    cni_exec("portmap", "ADD", name, &netns, &portmap_config(port, &prev))?;
                    portmap.push(before_portmap.elapsed());
                    adds.push(start.elapsed());
                    if i == 0 {
                        let _echo = Echo::start(&netns, Proto::Tcp, 80)?;
                        first_packet_1 = connect_latency(
                            &client_path,
                            SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT),
                            connects,
                        )?;
                    }
                }
                let first_ns = PathBuf::from("/run/netns").join(&names[0]);
                let last_ns = PathBuf::from("/run/netns").join(&names[count - 1]);
                let first = Echo::start(&first_ns, Proto::Tcp, 80)?;
                let last = Echo::start(&last_ns, Proto::Tcp, 80)?;
                let first_packet_n_first = connect_latency(
                    &client_path,
                    SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT),
                    connects,
                )?;
                let first_packet_n_last = connect_latency(
                    &client_path,
                    SocketAddr::new(NODE_IP.parse()?, FIRST_HOST_PORT + count as u16 - 1),
                    connects,
                )?;
                drop((first, last));
                Ok(Cni {
                    side: Side {
                        creates: Series(adds),
                        first_packet_1,
                        first_packet_n_first,
                        first_packet_n_last,
                    },
                    portmap: Series(portmap),
                })
            })
            .join()
            .map_err(|_| anyhow::anyhow!("CNI driver thread panicked"))?
    });
    drop(node);
    drop(client);
    result
}

fn print_row(label: &str, ours: (Duration, Duration), cni: (Duration, Duration)) {
    println!(
        "{label:<34} {:>9.2} {:>9.2} {:>10.2} {:>10.2} {:>9.1}x",
        ms(ours.0),
        ms(ours.1),
        ms(cni.0),
        ms(cni.1),
        ms(cni.0) / ms(ours.0)
    );
}

fn print_latency(label: &str, ours: &Series, cni: &Series) {
    println!(
        "{label:<34} {:>9.1} {:>9.1} {:>10.1} {:>10.1}",
        us(ours.all().0),
        us(ours.all().1),
        us(cni.all().0),
        us(cni.all().1),
    );
}

fn main() -> Result<()> {
    if !nh_tests::is_root() {
        eprintln!("*** SKIPPED bench_hostports: needs root (network namespaces, nftables). ***");
        return Ok(());
    }
    let count = env_count("BENCH_HOSTPORT_PODS", 1000);
    let connects = env_count("BENCH_CONNECTS", 300);
    ensure!(
        (110..=1000).contains(&count),
        "BENCH_HOSTPORT_PODS must be between 110 and 1000 (one bridge takes 1024 ports)"
    );
    eprintln!(
        "bench_hostports: {count} pods with one host port each through netns-holder, then \
         through the CNI chain with portmap..."
    );
    let ours = bench_ours(count, connects).context("netns-holder side")?;
    let cni = bench_cni(count, connects).context("CNI side")?;

    println!(
        "\nper-pod create with one host port, {count} pods in one node \
         (ms; medians, p99; ratio = CNI/ours)"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>10} {:>10}",
        "", "ours med", "ours p99", "CNI med", "CNI p99", "ratio"
    );
    let windows: [(&str, std::ops::Range<usize>); 3] = [
        ("at 1 pod (first 10)", 0..10),
        ("at 100 pods (91-110)", 90..110),
        ("at 1000 pods (last 10)", count - 10..count),
    ];
    for (label, range) in windows.iter().cloned() {
        print_row(
            &format!("create, {label}"),
            ours.side.creates.stats(range.clone()),
            cni.side.creates.stats(range),
        );
    }
    print_row(
        "create, all",
        ours.side.creates.all(),
        cni.side.creates.all(),
    );
    println!(
        "{:<34} {:>9} {:>9} {:>10.2} {:>10.2}",
        "  of which CNI portmap ADD alone",
        "",
        "",
        ms(cni.portmap.median()),
        ms(cni.portmap.all().1)
    );

    println!(
        "\nfirst-packet latency through a host port (TCP connect from the client to the node \
         address; µs; medians, p99; {connects} connects each)"
    );
    println!(
        "{:<34} {:>9} {:>9} {:>10} {:>10}",
        "", "ours med", "ours p99", "CNI med", "CNI p99"
    );
    print_latency(
        "1 port published",
        &ours.side.first_packet_1,
        &cni.side.first_packet_1,
    );
    print_latency(
        &format!("{count} ports, to the first"),
        &ours.side.first_packet_n_first,
        &cni.side.first_packet_n_first,
    );
    print_latency(
        &format!("{count} ports, to the last"),
        &ours.side.first_packet_n_last,
        &cni.side.first_packet_n_last,
    );

    println!(
        "\nthe host port inside our create, at {count} pods (ms, medians of {} each)",
        EXTRA_PODS / 2
    );
    println!(
        "  create with one port {:.2}, without {:.2}: the port costs {:.2}",
        ms(ours.with_port.median()),
        ms(ours.without_port.median()),
        ms(ours.with_port.median()) - ms(ours.without_port.median())
    );
    println!(
        "  one `nft -f -` element add in the same table (what the nft binary would cost per pod): {:.2}",
        ms(ours.nft_exec.median())
    );
    println!(
        "\ndaemon VmRSS with {count} pods and ports: {:.1} MiB",
        ours.rss_kib as f64 / 1024.0
    );

    let median = ours.side.creates.median();
    let speedup = ms(cni.side.creates.median()) / ms(median);
    let growth =
        ms(ours.side.creates.stats(count - 10..count).0) / ms(ours.side.creates.stats(0..10).0);
    let packet = us(ours.side.first_packet_n_last.median()) / us(ours.side.first_packet_1.median());
    let verdict = |ok: bool| if ok { "met" } else { "MISSED" };
    println!(
        "targets: create median <= 5 ms incl. the port: {} ({:.2} ms); >= 20x faster than the \
         CNI chain: {} ({speedup:.1}x); last 10 within 1.25x of first 10: {} ({growth:.2}x); \
         first packet at {count} ports within 1.1x of at 1: {} ({packet:.2}x)",
        verdict(ms(median) <= 5.0),
        ms(median),
        verdict(speedup >= 20.0),
        verdict(growth <= 1.25),
        verdict(packet <= 1.1),
    );
    Ok(())
}
