//! A container-runtime-like CNI invoker: runs a network configuration list's plugins
//! the way libcni does (containerd and CRI-O use it), inside a node namespace, and the
//! conflist Flannel writes for its delegate (`bridge` + `host-local` on `cni0`).
//!
//! ADD runs the plugins in order, each getting the previous one's result as
//! `prevResult`, and caches the last result as libcni does ([`cache`]: the runtime's
//! cache netfence reads); DEL runs them in reverse order with the
//! cached ADD result as `prevResult`; CHECK runs them in order with it. Each plugin's
//! configuration is its entry of the list with the list's `name` and `cniVersion`
//! injected, plus `runtimeConfig` with the runtime's values for the capabilities the
//! plugin declares (libcni's `injectRuntimeConfig`). Environment: `CNI_COMMAND`,
//! `CNI_CONTAINERID`, `CNI_NETNS`, `CNI_IFNAME`, `CNI_ARGS`, `CNI_PATH`.

use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::{Map, Value, json};

use crate::netns::Netns;

pub mod cache;

/// The pod MTU Flannel's VXLAN backend writes (`FLANNEL_MTU`): a 1500-byte uplink
/// minus 50 bytes of VXLAN encapsulation.
pub const VXLAN_MTU: u32 = 1450;

/// How long one plugin may run before it is killed and the operation fails.
const PLUGIN_TIMEOUT: Duration = Duration::from_secs(30);
const POLL: Duration = Duration::from_millis(5);

/// A network configuration list (`*.conflist`), as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct ConfList {
    json: Value,
}

impl ConfList {
    /// Parses a conflist; it needs `name`, `cniVersion` and a non-empty `plugins`
    /// array whose entries each have a `type`.
    pub fn parse(text: &str) -> anyhow::Result<ConfList> {
        let json: Value = serde_json::from_str(text).context("conflist is not JSON")?;
        ConfList::from_json(json)
    }

    pub fn from_json(json: Value) -> anyhow::Result<ConfList> {
        let list = ConfList { json };
        list.name()?;
        list.cni_version()?;
        let plugins = list.plugins()?;
        if plugins.is_empty() {
            bail!("conflist {:?} has no plugins", list.name()?);
        }
        for (i, plugin) in plugins.iter().enumerate() {
            plugin_type(plugin).with_context(|| format!("plugins[{i}]"))?;
        }
        Ok(list)
    }

    /// The conflist Flannel's CNI plugin builds for its delegate on a node whose pod
    /// subnets are `v4` and `v6` (one `host-local` range each), with the MTU Flannel
    /// adds for its VXLAN backend on a 1500-byte uplink (1450): bridge `cni0` as the
    /// pods' gateway, hairpin on, no masquerade, `routes` given to each pod, IPAM state
    /// in `data_dir` (the test bed's own directory, so parallel beds never share it).
    pub fn flannel_delegate(v4: &str, v6: &str, routes: &[&str], data_dir: &Path) -> ConfList {
        let routes: Vec<Value> = routes.iter().map(|dst| json!({ "dst": dst })).collect();
        ConfList {
            json: json!({
                "cniVersion": "1.0.0",
                "name": "cbr0",
                "plugins": [{
                    "type": "bridge",
                    "bridge": "cni0",
                    "mtu": VXLAN_MTU,
                    "isGateway": true,
                    "isDefaultGateway": true,
                    "hairpinMode": true,
                    "ipMasq": false,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{ "subnet": v4 }], [{ "subnet": v6 }]],
                        "routes": routes,
                        "dataDir": data_dir.to_string_lossy(),
                    },
                }],
            }),
        }
    }

    /// Appends a plugin (e.g. a chained `netfence-cni`) after the existing ones.
    pub fn push_plugin(&mut self, plugin: Value) -> anyhow::Result<()> {
        plugin_type(&plugin).context("the appended plugin")?;
        match self.json.get_mut("plugins").and_then(Value::as_array_mut) {
            Some(plugins) => {
                plugins.push(plugin);
                Ok(())
            }
            None => bail!("conflist has no plugins array"),
        }
    }

    /// Declares a capability (`"capabilities": {NAME: true}`) on plugin `index`, so the
    /// invoker passes it the runtime's value of that name in `runtimeConfig`.
    pub fn declare_capability(&mut self, index: usize, name: &str) -> anyhow::Result<()> {
        let plugin = self
            .json
            .get_mut("plugins")
            .and_then(Value::as_array_mut)
            .and_then(|p| p.get_mut(index))
            .and_then(Value::as_object_mut)
            .with_context(|| format!("conflist has no plugin {index}"))?;
        let caps = plugin
            .entry("capabilities")
            .or_insert_with(|| Value::Object(Map::new()));
        match caps.as_object_mut() {
            Some(caps) => {
                caps.insert(name.to_owned(), Value::Bool(true));
                Ok(())
            }
            None => bail!("plugin {index}'s capabilities is not an object"),
        }
    }

    pub fn name(&self) -> anyhow::Result<&str> {
        self.json
            .get("name")
            .and_then(Value::as_str)
            .context("conflist has no string `name`")
    }

    pub fn cni_version(&self) -> anyhow::Result<&str> {
        self.json
            .get("cniVersion")
            .and_then(Value::as_str)
            .context("conflist has no string `cniVersion`")
    }

    pub fn plugins(&self) -> anyhow::Result<&[Value]> {
        self.json
            .get("plugins")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .context("conflist has no `plugins` array")
    }

    pub fn json(&self) -> &Value {
        &self.json
    }

    /// Plugin `index`'s stdin: its entry with `name`, `cniVersion`, `prevResult` (when
    /// given) and `runtimeConfig` (the runtime values of its declared capabilities).
    pub fn plugin_config(
        &self,
        index: usize,
        prev_result: Option<&Value>,
        runtime_config: &Map<String, Value>,
    ) -> anyhow::Result<Value> {
        let mut conf = self
            .plugins()?
            .get(index)
            .and_then(Value::as_object)
            .with_context(|| format!("conflist has no plugin object {index}"))?
            .clone();
        conf.insert("name".into(), Value::String(self.name()?.to_owned()));
        conf.insert(
            "cniVersion".into(),
            Value::String(self.cni_version()?.to_owned()),
        );
        if let Some(prev) = prev_result {
            conf.insert("prevResult".into(), prev.clone());
        }
        let declared: Map<String, Value> = conf
            .get("capabilities")
            .and_then(Value::as_object)
            .map(|caps| {
                caps.iter()
                    .filter(|(_, on)| on.as_bool() == Some(true))
                    .filter_map(|(k, _)| Some((k.clone(), runtime_config.get(k)?.clone())))
                    .collect()
            })
            .unwrap_or_default();
        if !declared.is_empty() {
            conf.insert("runtimeConfig".into(), Value::Object(declared));
        }
        Ok(Value::Object(conf))
    }
}

fn plugin_type(plugin: &Value) -> anyhow::Result<&str> {
    plugin
        .get("type")
        .and_then(Value::as_str)
        .filter(|t| !t.is_empty() && !t.contains('/'))
        .context("plugin has no `type` naming an executable")
}

/// One container's attachment to a network: what the runtime passes besides the
/// configuration.
#[derive(Clone, Debug)]
pub struct Attachment {
    /// `CNI_CONTAINERID` (also keys the cached ADD result).
    pub container_id: String,
    /// The container's network namespace name; `CNI_NETNS` is `/run/netns/<name>`.
    pub netns: String,
    /// `CNI_IFNAME`, `eth0` for pods.
    pub ifname: String,
    /// `CNI_ARGS` pairs, joined as `K=V;K=V`.
    pub args: Vec<(String, String)>,
    /// Runtime values for capabilities (`ips`, `portMappings`...).
    pub runtime_config: Map<String, Value>,
}

impl Attachment {
    /// A pod's attachment as kubelet makes it: `eth0`, `CNI_ARGS` with
    /// `IgnoreUnknown=1` and the `K8S_POD_*` keys, and `ips` in the runtime config when
    /// the caller wants fixed addresses (honoured by `host-local` when the plugin
    /// declares the `ips` capability).
    pub fn pod(
        container_id: &str,
        netns: &str,
        namespace: &str,
        pod: &str,
        ips: &[IpAddr],
    ) -> Attachment {
        let mut runtime_config = Map::new();
        if !ips.is_empty() {
            runtime_config.insert(
                "ips".into(),
                Value::Array(ips.iter().map(|ip| Value::String(ip.to_string())).collect()),
            );
        }
        Attachment {
            container_id: container_id.into(),
            netns: netns.into(),
            ifname: "eth0".into(),
            args: vec![
                ("IgnoreUnknown".into(), "1".into()),
                ("K8S_POD_NAMESPACE".into(), namespace.into()),
                ("K8S_POD_NAME".into(), pod.into()),
                ("K8S_POD_INFRA_CONTAINER_ID".into(), container_id.into()),
            ],
            runtime_config,
        }
    }

    fn cni_args(&self) -> String {
        self.args
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// The CNI commands the invoker runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CniCommand {
    Add,
    Del,
    Check,
}

impl CniCommand {
    fn as_str(self) -> &'static str {
        match self {
            CniCommand::Add => "ADD",
            CniCommand::Del => "DEL",
            CniCommand::Check => "CHECK",
        }
    }
}

/// Runs conflists' plugins inside a node namespace, finding them in `plugin_dirs` (in
/// order, like `CNI_PATH`) and caching ADD results in `cache_dir/results` (libcni's
/// layout: `cache_dir` is a node's `/var/lib/cni`).
#[derive(Clone, Debug)]
pub struct Cni {
    plugin_dirs: Vec<PathBuf>,
    cache_dir: PathBuf,
}

impl Cni {
    pub fn new(plugin_dirs: Vec<PathBuf>, cache_dir: PathBuf) -> Cni {
        Cni {
            plugin_dirs,
            cache_dir,
        }
    }

    /// Where ADD results are cached (`--cni-cache-dir` of an agent on this node).
    pub fn results_dir(&self) -> PathBuf {
        self.cache_dir.join("results")
    }

    /// Searches `dir` before the other plugin directories (e.g. a freshly built
    /// chained plugin).
    pub fn prepend_plugin_dir(&mut self, dir: PathBuf) {
        self.plugin_dirs.insert(0, dir);
    }

    /// The first `plugin_dirs` entry holding an executable named `name`.
    pub fn find_plugin(&self, name: &str) -> anyhow::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt as _;
        self.plugin_dirs
            .iter()
            .map(|dir| dir.join(name))
            .find(|path| {
                path.metadata()
                    .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
            })
            .with_context(|| format!("CNI plugin {name:?} not found in {:?}", self.plugin_dirs))
    }

    /// ADD: every plugin in order, each given the previous result; the last result is
    /// cached for DEL and CHECK and returned.
    pub fn add(&self, node: &Netns, list: &ConfList, att: &Attachment) -> anyhow::Result<Value> {
        let mut prev: Option<Value> = None;
        for index in 0..list.plugins()?.len() {
            let conf = list.plugin_config(index, prev.as_ref(), &att.runtime_config)?;
            let out = self.exec(node, CniCommand::Add, &conf, att)?;
            let result: Value = serde_json::from_str(&out).with_context(|| {
                format!(
                    "CNI plugin {} ADD printed no JSON result: {out:?}",
                    conf_type(&conf)
                )
            })?;
            prev = Some(result);
        }
        let result = prev.context("conflist has no plugins")?;
        let results = self.results_dir();
        std::fs::create_dir_all(&results)
            .with_context(|| format!("creating {}", results.display()))?;
        let cache = self.cache_path(list, att)?;
        let entry = cache::entry(list, att, &result)?;
        std::fs::write(&cache, serde_json::to_vec(&entry)?)
            .with_context(|| format!("caching the ADD result in {}", cache.display()))?;
        Ok(result)
    }

    /// DEL: every plugin in reverse order with the cached ADD result (none if ADD never
    /// completed); the cache entry is removed afterwards.
    pub fn del(&self, node: &Netns, list: &ConfList, att: &Attachment) -> anyhow::Result<()> {
        let cached = self.cached(list, att)?;
        for index in (0..list.plugins()?.len()).rev() {
            let conf = list.plugin_config(index, cached.as_ref(), &att.runtime_config)?;
            self.exec(node, CniCommand::Del, &conf, att)?;
        }
        let cache = self.cache_path(list, att)?;
        match std::fs::remove_file(&cache) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(e).with_context(|| format!("removing {}", cache.display()))
            }
            _ => Ok(()),
        }
    }

    /// CHECK: every plugin in order with the cached ADD result.
    pub fn check(&self, node: &Netns, list: &ConfList, att: &Attachment) -> anyhow::Result<()> {
        let cached = self
            .cached(list, att)?
            .context("CHECK needs a cached ADD result; none for this attachment")?;
        for index in 0..list.plugins()?.len() {
            let conf = list.plugin_config(index, Some(&cached), &att.runtime_config)?;
            self.exec(node, CniCommand::Check, &conf, att)?;
        }
        Ok(())
    }

    /// The cached ADD result of this attachment, if any.
    pub fn cached(&self, list: &ConfList, att: &Attachment) -> anyhow::Result<Option<Value>> {
        let path = self.cache_path(list, att)?;
        match std::fs::read(&path) {
            Ok(bytes) => {
                let entry = serde_json::from_slice(&bytes)
                    .with_context(|| format!("cached result {}", path.display()))?;
                Ok(Some(cache::result_of(entry).with_context(|| {
                    format!("cached result {}", path.display())
                })?))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    fn cache_path(&self, list: &ConfList, att: &Attachment) -> anyhow::Result<PathBuf> {
        Ok(self.results_dir().join(format!(
            "{}-{}-{}",
            list.name()?,
            att.container_id,
            att.ifname
        )))
    }

    /// Runs one plugin inside `node` with `conf` on stdin; returns its stdout. A
    /// failure carries the plugin's CNI error (code, msg, details) and its stderr.
    fn exec(
        &self,
        node: &Netns,
        command: CniCommand,
        conf: &Value,
        att: &Attachment,
    ) -> anyhow::Result<String> {
        let kind = conf_type(conf);
        let binary = self.find_plugin(&kind)?;
        let cni_path = std::env::join_paths(&self.plugin_dirs).context("CNI_PATH")?;
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", node.name()])
            .arg(&binary)
            .env("CNI_COMMAND", command.as_str())
            .env("CNI_CONTAINERID", &att.container_id)
            .env("CNI_NETNS", format!("/run/netns/{}", att.netns))
            .env("CNI_IFNAME", &att.ifname)
            .env("CNI_ARGS", att.cni_args())
            .env("CNI_PATH", cni_path)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let what = format!("CNI plugin {kind} {}", command.as_str());
        let (status, stdout, stderr) = run_bounded(&mut cmd, &serde_json::to_vec(conf)?)
            .with_context(|| format!("running {what} ({})", binary.display()))?;
        if !status.success() {
            bail!(
                "{what} failed ({status}): {}{}",
                describe_error(&stdout),
                if stderr.trim().is_empty() {
                    String::new()
                } else {
                    format!("; stderr: {}", stderr.trim())
                }
            );
        }
        Ok(stdout)
    }
}

fn conf_type(conf: &Value) -> String {
    conf.get("type")
        .and_then(Value::as_str)
        .unwrap_or("?")
        .to_owned()
}

/// A CNI error result (`{"code", "msg", "details"}`) as one line; other output as is.
pub fn describe_error(stdout: &str) -> String {
    let Ok(error) = serde_json::from_str::<Value>(stdout) else {
        return format!("output {:?}", stdout.trim());
    };
    let code = error.get("code").and_then(Value::as_u64);
    let msg = error.get("msg").and_then(Value::as_str);
    let details = error
        .get("details")
        .and_then(Value::as_str)
        .filter(|d| !d.is_empty());
    match (code, msg) {
        (Some(code), Some(msg)) => match details {
            Some(details) => format!("CNI error {code}: {msg} ({details})"),
            None => format!("CNI error {code}: {msg}"),
        },
        _ => format!("output {:?}", stdout.trim()),
    }
}

/// Spawns `cmd`, feeds it `input`, and collects its output, killing it after
/// [`PLUGIN_TIMEOUT`].
fn run_bounded(
    cmd: &mut Command,
    input: &[u8],
) -> anyhow::Result<(std::process::ExitStatus, String, String)> {
    let mut child = cmd.spawn()?;
    let mut stdin = child.stdin.take().context("no stdin pipe")?;
    let mut stdout = child.stdout.take().context("no stdout pipe")?;
    let mut stderr = child.stderr.take().context("no stderr pipe")?;
    std::thread::scope(|scope| {
        let out = scope.spawn(move || {
            let mut s = String::new();
            stdout.read_to_string(&mut s).map(|_| s)
        });
        let err = scope.spawn(move || {
            let mut s = String::new();
            stderr.read_to_string(&mut s).map(|_| s)
        });
        // A plugin that exits without reading its config closes the pipe: not an error
        // of ours, its exit status tells.
        let _written = stdin.write_all(input);
        drop(stdin);
        let deadline = Instant::now() + PLUGIN_TIMEOUT;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if Instant::now() > deadline {
                child.kill()?;
                child.wait()?;
                bail!("killed after {PLUGIN_TIMEOUT:?}");
            }
            std::thread::sleep(POLL);
        };
        let out = out
            .join()
            .map_err(|_| anyhow::anyhow!("stdout reader panicked"))??;
        let err = err
            .join()
            .map_err(|_| anyhow::anyhow!("stderr reader panicked"))??;
        Ok((status, out, err))
    })
}

/// The host-side veth of a pod in a `bridge` plugin result: the interface outside any
/// sandbox that is not the bridge itself (the plugin names it `veth` + random hex).
pub fn host_veth(result: &Value, bridge: &str) -> anyhow::Result<String> {
    let interfaces = result
        .get("interfaces")
        .and_then(Value::as_array)
        .context("CNI result has no interfaces")?;
    let mut host = interfaces.iter().filter(|i| {
        i.get("sandbox")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
            && i.get("name").and_then(Value::as_str) != Some(bridge)
    });
    match (host.next(), host.next()) {
        (Some(one), None) => one
            .get("name")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .context("CNI result's host interface has no name"),
        _ => bail!("CNI result has not exactly one host-side interface besides {bridge}: {result}"),
    }
}

/// The addresses (without prefix length) in a CNI result's `ips`.
pub fn result_ips(result: &Value) -> anyhow::Result<Vec<IpAddr>> {
    result
        .get("ips")
        .and_then(Value::as_array)
        .context("CNI result has no ips")?
        .iter()
        .map(|ip| {
            let cidr = ip
                .get("address")
                .and_then(Value::as_str)
                .context("CNI result ip without address")?;
            let addr = cidr.split_once('/').map_or(cidr, |(a, _)| a);
            addr.parse()
                .with_context(|| format!("CNI result address {cidr:?}"))
        })
        .collect()
}

#[cfg(test)]
mod tests;
