//! OCI bundles for manual pods: the `config.json` behind `netns-holder pod spec`.
//!
//! A pod made with `netns-holder pod create` is a network namespace held by our pause. An
//! application joins it by running in an OCI container whose `linux.namespaces` names that
//! namespace by path; this module writes such a config with the `oci-spec` types, in the
//! shape `runc spec` produces, with these differences:
//!
//! * `linux.namespaces`: new pid, ipc, uts and mount namespaces, and the pod's network
//!   namespace joined by its path (the pod's `netns` as the daemon reports it);
//! * no `process.rlimits`, no `process.oomScoreAdj` and no `linux.resources`: raising a limit
//!   or lowering the OOM score needs `CAP_SYS_RESOURCE`, which root lacks on some nodes, and
//!   a pod's app should not silently get limits nobody asked for;
//! * no `hostname` (a pod name may be longer than a hostname can be).
//!
//! The rest is `runc spec`'s: uid/gid 0, cwd `/`, `PATH` in the environment, the
//! capabilities `CAP_AUDIT_WRITE`, `CAP_KILL` and `CAP_NET_BIND_SERVICE`,
//! `noNewPrivileges`, a read-only root at `rootfs` (relative to the bundle unless absolute),
//! the usual `/proc`, `/dev`, `/sys` mounts, masked and read-only paths.

use std::io::Write;
use std::path::{Path, PathBuf};

use oci_spec::OciSpecError;
use oci_spec::runtime::{
    Capability, LinuxBuilder, LinuxCapabilitiesBuilder, LinuxNamespace, LinuxNamespaceBuilder,
    LinuxNamespaceType, ProcessBuilder, RootBuilder, Spec, SpecBuilder, UserBuilder,
    get_default_maskedpaths, get_default_mounts, get_default_readonly_paths,
};
use thiserror::Error;

use crate::names::PodName;

/// The OCI runtime spec version written into `ociVersion`.
pub const OCI_VERSION: &str = "1.0.2";

/// The `PATH` of the container process.
pub const DEFAULT_PATH: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The name of the config file in a bundle.
pub const CONFIG_FILE: &str = "config.json";

/// Why a pod bundle config could not be made or written; every variant names the pod or
/// the file.
#[derive(Debug, Error)]
pub enum SpecError {
    /// No command was given.
    #[error("pod {pod}: no command given for the container (put it after `--`)")]
    NoCommand {
        /// The pod.
        pod: PodName,
    },
    /// The pod's namespace path is not absolute (a runtime would resolve it against its own
    /// working directory).
    #[error("pod {pod}: its netns path {:?} is not absolute", netns.display().to_string())]
    RelativeNetns {
        /// The pod.
        pod: PodName,
        /// The path the daemon reported.
        netns: PathBuf,
    },
    /// An `oci-spec` builder refused the values.
    #[error("pod {pod}: cannot build the OCI {part}: {source}")]
    Build {
        /// The pod.
        pod: PodName,
        /// The part being built, e.g. `process`.
        part: &'static str,
        /// The builder's error.
        #[source]
        source: OciSpecError,
    },
    /// The config file exists and overwriting was not asked for.
    #[error("{} already exists; remove it first or pass --force", path.display())]
    Exists {
        /// The config file.
        path: PathBuf,
    },
    /// The config could not be encoded.
    #[error("pod {pod}: cannot encode the OCI config as JSON: {source}")]
    Encode {
        /// The pod.
        pod: PodName,
        /// The encoder's error.
        #[source]
        source: serde_json::Error,
    },
    /// The config file could not be written.
    #[error("cannot write {}: {source}", path.display())]
    Write {
        /// The file (or the temporary file beside it).
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
}

/// What a pod's app container runs and where its root file system is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpecParams {
    /// The pod (for error messages).
    pub pod: PodName,
    /// The pod's network namespace path, as the daemon reports it.
    pub netns: PathBuf,
    /// The root file system: absolute, or relative to the bundle directory.
    pub rootfs: PathBuf,
    /// The command and its arguments; not empty.
    pub args: Vec<String>,
}

/// The namespaces of a pod's app container: new pid, ipc, uts and mount namespaces, and the
/// network namespace at `netns`.
pub fn pod_namespaces(netns: &Path) -> Result<Vec<LinuxNamespace>, OciSpecError> {
    let mut namespaces = [
        LinuxNamespaceType::Pid,
        LinuxNamespaceType::Ipc,
        LinuxNamespaceType::Uts,
        LinuxNamespaceType::Mount,
    ]
    .into_iter()
    .map(|typ| LinuxNamespaceBuilder::default().typ(typ).build())
    .collect::<Result<Vec<_>, _>>()?;
    namespaces.push(
        LinuxNamespaceBuilder::default()
            .typ(LinuxNamespaceType::Network)
            .path(netns)
            .build()?,
    );
    Ok(namespaces)
}

/// Builds the OCI runtime config of an app container that joins the pod's network
/// namespace (see the module documentation for its exact shape).
pub fn pod_spec(params: &PodSpecParams) -> Result<Spec, SpecError> {
    let pod = &params.pod;
    if params.args.is_empty() {
        return Err(SpecError::NoCommand { pod: pod.clone() });
    }
    if !params.netns.is_absolute() {
        return Err(SpecError::RelativeNetns {
            pod: pod.clone(),
            netns: params.netns.clone(),
        });
    }
    let build = |part: &'static str| {
        move |source| SpecError::Build {
            pod: pod.clone(),
            part,
            source,
        }
    };
    let caps: std::collections::HashSet<Capability> = [
        Capability::AuditWrite,
        Capability::Kill,
        Capability::NetBindService,
    ]
    .into_iter()
    .collect();
    let mut capabilities = LinuxCapabilitiesBuilder::default()
        .bounding(caps.clone())
        .effective(caps.clone())
        .permitted(caps)
        .build()
        .map_err(build("capabilities"))?;
    // The builder starts from the default, which also fills the ambient and inheritable
    // sets; `runc spec` leaves them empty.
    capabilities.set_ambient(None);
    capabilities.set_inheritable(None);
    let user = UserBuilder::default()
        .uid(0u32)
        .gid(0u32)
        .build()
        .map_err(build("user"))?;
    let mut process = ProcessBuilder::default()
        .terminal(false)
        .user(user)
        .args(params.args.clone())
        .env(vec![DEFAULT_PATH.to_string()])
        .cwd("/")
        .capabilities(capabilities)
        .no_new_privileges(true)
        .build()
        .map_err(build("process"))?;
    // The builder starts from `Process::default()`, which carries an RLIMIT_NOFILE.
    process.set_rlimits(None);
    process.set_oom_score_adj(None);
    let root = RootBuilder::default()
        .path(&params.rootfs)
        .readonly(true)
        .build()
        .map_err(build("root"))?;
    let namespaces = pod_namespaces(&params.netns).map_err(build("namespaces"))?;
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .masked_paths(get_default_maskedpaths())
        .readonly_paths(get_default_readonly_paths())
        .build()
        .map_err(build("linux section"))?;
    // `Linux::default()` has an empty `resources`; there is nothing to limit.
    linux.set_resources(None);
    let mut spec = SpecBuilder::default()
        .version(OCI_VERSION)
        .process(process)
        .root(root)
        .mounts(get_default_mounts())
        .linux(linux)
        .build()
        .map_err(build("config"))?;
    // `Spec::default()` names the host "youki" and has empty annotations.
    spec.set_hostname(None);
    spec.set_annotations(None);
    Ok(spec)
}

/// Writes `spec` as `<dir>/config.json` (through a temporary file renamed into place) and
/// returns the file's path. An existing file is replaced only with `force`.
pub fn write_config(
    pod: &PodName,
    dir: &Path,
    spec: &Spec,
    force: bool,
) -> Result<PathBuf, SpecError> {
    let path = dir.join(CONFIG_FILE);
    if !force && path.exists() {
        return Err(SpecError::Exists { path });
    }
    let mut text = serde_json::to_string_pretty(spec).map_err(|source| SpecError::Encode {
        pod: pod.clone(),
        source,
    })?;
    text.push('\n');
    let temp = dir.join(format!(".{CONFIG_FILE}.tmp-{}", std::process::id()));
    let write = |path: &Path, source| SpecError::Write {
        path: path.to_path_buf(),
        source,
    };
    let result = std::fs::File::create(&temp)
        .and_then(|mut file| {
            file.write_all(text.as_bytes())?;
            file.sync_all()
        })
        .map_err(|e| write(&temp, e))
        .and_then(|()| std::fs::rename(&temp, &path).map_err(|e| write(&path, e)));
    if result.is_err() {
        let _ = std::fs::remove_file(&temp);
    }
    result.map(|()| path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params() -> PodSpecParams {
        PodSpecParams {
            pod: PodName::new("web").unwrap(),
            netns: PathBuf::from("/run/netns/web"),
            rootfs: PathBuf::from("rootfs"),
            args: vec!["/bin/sh".into(), "-c".into(), "echo hi".into()],
        }
    }

    #[test]
    fn joins_the_pod_network_namespace_and_creates_the_others() {
        let spec = pod_spec(&params()).unwrap();
        let json = serde_json::to_value(&spec).unwrap();
        let namespaces = json["linux"]["namespaces"].as_array().unwrap();
        let types: Vec<&str> = namespaces
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(types, ["pid", "ipc", "uts", "mount", "network"]);
        for ns in &namespaces[..4] {
            assert!(ns.get("path").is_none(), "{ns}");
        }
        assert_eq!(namespaces[4]["path"], "/run/netns/web");
        assert_eq!(json["process"]["args"][2], "echo hi");
        assert_eq!(json["root"]["path"], "rootfs");
        assert_eq!(json["ociVersion"], OCI_VERSION);
    }

    #[test]
    fn no_rlimits_no_oom_score_adj_no_resources_no_hostname() {
        let json = serde_json::to_value(pod_spec(&params()).unwrap()).unwrap();
        assert!(json["process"].get("rlimits").is_none(), "{json}");
        assert!(json["process"].get("oomScoreAdj").is_none(), "{json}");
        assert!(json["linux"].get("resources").is_none(), "{json}");
        assert!(json.get("hostname").is_none(), "{json}");
        assert!(json["process"]["capabilities"].get("ambient").is_none());
        assert_eq!(json["process"]["noNewPrivileges"], true);
    }

    #[test]
    fn refusals_name_the_pod() {
        let mut p = params();
        p.args.clear();
        let err = pod_spec(&p).unwrap_err();
        assert!(err.to_string().contains("pod web"), "{err}");
        let mut p = params();
        p.netns = PathBuf::from("netns/web");
        let err = pod_spec(&p).unwrap_err();
        assert!(err.to_string().contains("not absolute"), "{err}");
    }

    #[test]
    fn write_refuses_to_overwrite_without_force() {
        let dir = tempfile::tempdir().unwrap();
        let spec = pod_spec(&params()).unwrap();
        let pod = PodName::new("web").unwrap();
        let path = write_config(&pod, dir.path(), &spec, false).unwrap();
        assert_eq!(path, dir.path().join(CONFIG_FILE));
        let back: Spec = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(back, spec);
        let err = write_config(&pod, dir.path(), &spec, false).unwrap_err();
        assert!(err.to_string().contains("already exists"), "{err}");
        write_config(&pod, dir.path(), &spec, true).unwrap();
        let leftovers: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "{leftovers:?}");
    }
}
