//! Reading files and folders of Kubernetes manifests into typed Istio resources.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::diag::{Diagnostic, Kind, Severity};
use crate::istio::{
    DestinationRuleSpec, GatewaySpec, Object, ObjectMeta, ServiceEntrySpec, VirtualServiceSpec,
};
use crate::node::{self, DeContext, Node, Value};
use crate::validate;

/// The API group Egret reads.
pub const ISTIO_NETWORKING_GROUP: &str = "networking.istio.io";
/// Versions of that group that share the schema Egret implements.
pub const ISTIO_NETWORKING_VERSIONS: &[&str] = &["v1alpha3", "v1beta1", "v1"];

/// How to read manifests.
#[derive(Clone, Debug)]
pub struct LoadOptions {
    /// Namespace given to resources without `metadata.namespace` (the gateway's namespace,
    /// as `kubectl apply -n` would).
    pub namespace: String,
    /// Kubernetes cluster domain, used to expand short host names (`reviews` →
    /// `reviews.<ns>.svc.cluster.local`) when checking references. Keep it equal to
    /// `CompileOptions::cluster_domain`.
    pub cluster_domain: String,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            namespace: "istio-system".into(),
            cluster_domain: "cluster.local".into(),
        }
    }
}

/// Where a resource came from.
#[derive(Clone, Debug)]
pub struct Source {
    pub file: PathBuf,
    /// Line where the object starts (1-based).
    pub line: u32,
    /// Index of the document tree in [`Loaded`].
    pub(crate) doc: usize,
    /// Path of the object inside its document: empty, or `items[3]` inside a `kind: List`.
    pub(crate) base: String,
}

/// One Istio resource, typed, with its origin.
#[derive(Debug)]
pub struct Resource<T> {
    pub kind: Kind,
    pub name: String,
    /// `metadata.namespace`, or the default namespace when absent.
    pub namespace: String,
    pub api_version: String,
    pub metadata: ObjectMeta,
    pub spec: T,
    pub source: Source,
}

impl<T> Resource<T> {
    /// `Kind namespace/name`, as diagnostics print it.
    pub fn id(&self) -> String {
        format!("{} {}/{}", self.kind, self.namespace, self.name)
    }
}

/// A Kubernetes object that is not one of the four kinds Egret reads.
#[derive(Clone, Debug)]
pub struct Skipped {
    pub file: PathBuf,
    pub line: u32,
    pub api_version: String,
    pub kind: String,
    pub namespace: Option<String>,
    pub name: Option<String>,
}

/// Everything read from the given files, in load order (paths sorted, documents in order).
#[derive(Debug, Default)]
pub struct Loaded {
    pub service_entries: Vec<Resource<ServiceEntrySpec>>,
    pub gateways: Vec<Resource<GatewaySpec>>,
    pub virtual_services: Vec<Resource<VirtualServiceSpec>>,
    pub destination_rules: Vec<Resource<DestinationRuleSpec>>,
    /// Objects of other kinds (Deployment, Service, Secret, ...), not used.
    pub skipped: Vec<Skipped>,
    pub warnings: Vec<Diagnostic>,
    /// First 12 hex characters of the SHA-256 over the files' contents, in path order.
    pub version: String,
    /// The files read, sorted.
    pub files: Vec<PathBuf>,
    pub options: LoadOptions,
    pub(crate) docs: Vec<Node>,
}

impl Loaded {
    /// The tree of the object a resource came from.
    pub(crate) fn object_node(&self, source: &Source) -> Option<&Node> {
        let doc = self.docs.get(source.doc)?;
        if source.base.is_empty() {
            Some(doc)
        } else {
            doc.at(&source.base)
        }
    }

    /// The line of `field` (a path relative to the object, e.g. `spec.http[0]`) in the
    /// resource's file; the object's first line when the field is not written.
    pub fn line_of(&self, source: &Source, field: &str) -> u32 {
        match self.object_node(source) {
            Some(n) if !field.is_empty() => n.line_of(field),
            _ => source.line,
        }
    }

    /// A diagnostic about a field of a resource.
    pub fn diagnostic<T>(
        &self,
        res: &Resource<T>,
        field: &str,
        severity: Severity,
        message: impl Into<String>,
    ) -> Diagnostic {
        Diagnostic {
            severity,
            file: res.source.file.clone(),
            line: self.line_of(&res.source, field),
            resource: Some(res.id()),
            field: (!field.is_empty()).then(|| field.to_string()),
            message: message.into(),
        }
    }
}

/// The configuration could not be loaded. `errors` is never empty.
#[derive(Debug, thiserror::Error)]
pub struct LoadErrors {
    pub errors: Vec<Diagnostic>,
    pub warnings: Vec<Diagnostic>,
}

impl fmt::Display for LoadErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} configuration error(s)", self.errors.len())?;
        for e in &self.errors {
            write!(f, "\n  {e}")?;
        }
        Ok(())
    }
}

/// Loads the files and folders (recursively: `*.yaml`, `*.yml`) with default options.
pub fn load(paths: &[PathBuf]) -> Result<Loaded, LoadErrors> {
    load_with_options(paths, &LoadOptions::default())
}

/// Loads the files and folders (recursively: `*.yaml`, `*.yml`; names starting with `.` are
/// skipped in folders, as Kubernetes' `..data` links in mounted ConfigMaps are).
pub fn load_with_options(paths: &[PathBuf], opts: &LoadOptions) -> Result<Loaded, LoadErrors> {
    let mut errors = Vec::new();
    let mut files = Vec::new();
    for p in paths {
        collect_files(p, true, &mut files, &mut errors);
    }
    files.sort();
    files.dedup();
    let mut sources = Vec::with_capacity(files.len());
    for f in files {
        match std::fs::read(&f) {
            Ok(bytes) => match String::from_utf8(bytes) {
                Ok(text) => sources.push((f, text)),
                Err(_) => errors.push(file_error(&f, 0, "file is not UTF-8 text")),
            },
            Err(e) => errors.push(file_error(&f, 0, format!("cannot read: {e}"))),
        }
    }
    let mut result = load_sources(&sources, opts);
    if !errors.is_empty() {
        match &mut result {
            Ok(loaded) => {
                return Err(LoadErrors {
                    errors,
                    warnings: std::mem::take(&mut loaded.warnings),
                });
            }
            Err(e) => {
                errors.append(&mut e.errors);
                e.errors = errors;
            }
        }
    }
    result
}

fn collect_files(
    path: &Path,
    explicit: bool,
    out: &mut Vec<PathBuf>,
    errors: &mut Vec<Diagnostic>,
) {
    let meta = match std::fs::metadata(path) {
        Ok(m) => m,
        Err(e) => {
            errors.push(file_error(path, 0, format!("cannot read: {e}")));
            return;
        }
    };
    if meta.is_dir() {
        let entries = match std::fs::read_dir(path) {
            Ok(rd) => rd,
            Err(e) => {
                errors.push(file_error(path, 0, format!("cannot read folder: {e}")));
                return;
            }
        };
        let mut children: Vec<PathBuf> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        children.sort();
        for child in children {
            let hidden = child
                .file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with('.'));
            if !hidden {
                collect_files(&child, false, out, errors);
            }
        }
    } else if explicit || is_yaml(path) {
        out.push(path.to_path_buf());
    }
}

fn is_yaml(path: &Path) -> bool {
    matches!(
        path.extension().and_then(|e| e.to_str()),
        Some("yaml" | "yml")
    )
}

fn file_error(file: &Path, line: u32, message: impl Into<String>) -> Diagnostic {
    Diagnostic {
        severity: Severity::Error,
        file: file.to_path_buf(),
        line,
        resource: None,
        field: None,
        message: message.into(),
    }
}

/// Loads manifests already in memory: `(path, text)` pairs (the path is only used in
/// diagnostics and ordering). Useful for tests and for configuration that is not on disk.
pub fn load_sources(
    sources: &[(PathBuf, String)],
    opts: &LoadOptions,
) -> Result<Loaded, LoadErrors> {
    let mut sorted: Vec<&(PathBuf, String)> = sources.iter().collect();
    sorted.sort_by(|a, b| a.0.cmp(&b.0));

    let mut hasher = Sha256::new();
    for (_, text) in &sorted {
        hasher.update((text.len() as u64).to_be_bytes());
        hasher.update(text.as_bytes());
    }
    let digest = hasher.finalize();
    let version: String = digest.iter().take(6).map(|b| format!("{b:02x}")).collect();

    let mut st = LoadState {
        loaded: Loaded {
            version,
            options: opts.clone(),
            ..Loaded::default()
        },
        errors: Vec::new(),
    };
    for (path, text) in sorted {
        st.loaded.files.push(path.clone());
        st.load_file(path, text);
    }
    let LoadState {
        mut loaded,
        mut errors,
    } = st;
    validate::cross_check(&loaded, &mut errors);
    tracing::info!(version = %loaded.version, files = loaded.files.len(), "configuration loaded");
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(LoadErrors {
            errors,
            warnings: std::mem::take(&mut loaded.warnings),
        })
    }
}

struct LoadState {
    loaded: Loaded,
    errors: Vec<Diagnostic>,
}

/// A line `apiVersion:<value>` (no space after the colon, as web pages that mangle text
/// produce: `apiVersion:.NETworking.istio.io/v1alpha3`) is not a YAML mapping entry. We read it
/// as `apiVersion: <value>` and warn. Returns the repaired text and the repaired lines.
fn repair_api_version_lines(text: &str) -> (std::borrow::Cow<'_, str>, Vec<u32>) {
    let mut repaired = Vec::new();
    let mut out = String::new();
    for (i, line) in text.split_inclusive('\n').enumerate() {
        let indent = line.len() - line.trim_start_matches([' ', '-']).len();
        let rest = &line[indent..];
        if let Some(value) = rest.strip_prefix("apiVersion:") {
            if value
                .chars()
                .next()
                .is_some_and(|c| !c.is_whitespace() && c != '#')
            {
                repaired.push(i as u32 + 1);
                out.push_str(&line[..indent]);
                out.push_str("apiVersion: ");
                out.push_str(value);
                continue;
            }
        }
        out.push_str(line);
    }
    if repaired.is_empty() {
        (std::borrow::Cow::Borrowed(text), repaired)
    } else {
        (std::borrow::Cow::Owned(out), repaired)
    }
}

impl LoadState {
    fn load_file(&mut self, path: &Path, text: &str) {
        let (text, repaired) = repair_api_version_lines(text);
        let docs = match node::parse_documents(&text) {
            Ok(d) => d,
            Err(e) => {
                self.errors.push(file_error(
                    path,
                    e.line,
                    format!("invalid YAML: {}", e.message),
                ));
                return;
            }
        };
        for doc in docs {
            let idx = self.loaded.docs.len();
            self.loaded.docs.push(doc);
            self.load_object(path, idx, String::new(), &repaired);
        }
    }

    fn load_object(&mut self, path: &Path, doc: usize, base: String, repaired: &[u32]) {
        let Some(node) = object_node_in(&self.loaded.docs, doc, &base) else {
            return;
        };
        let head = Head::read(node);
        let line = head.line;
        let err = |field: &str, line: u32, resource: Option<String>, msg: String| Diagnostic {
            severity: Severity::Error,
            file: path.to_path_buf(),
            line,
            resource,
            field: (!field.is_empty()).then(|| field.to_string()),
            message: msg,
        };
        if !head.is_map {
            self.errors.push(err(
                "",
                line,
                None,
                "expected a Kubernetes object (a mapping with apiVersion and kind)".into(),
            ));
            return;
        }
        let Head {
            meta_name, meta_ns, ..
        } = head.clone();
        let kind = match head.kind {
            Ok(Some((k, _))) => k,
            Ok(None) => {
                self.errors.push(err(
                    "kind",
                    line,
                    None,
                    "required field is missing: this is not a Kubernetes object".into(),
                ));
                return;
            }
            Err(l) => {
                self.errors
                    .push(err("kind", l, None, "expected a string".into()));
                return;
            }
        };
        let (api_version, api_line) = match head.api_version {
            Ok(Some(v)) => v,
            Ok(None) => {
                self.errors.push(err(
                    "apiVersion",
                    line,
                    None,
                    format!("required field is missing (kind {kind})"),
                ));
                return;
            }
            Err(l) => {
                self.errors
                    .push(err("apiVersion", l, None, "expected a string".into()));
                return;
            }
        };

        if kind == "List" || (kind.ends_with("List") && head.items.is_some()) {
            let count = match head.items {
                Some(Ok(n)) => n,
                None => 0,
                Some(Err(l)) => {
                    self.errors
                        .push(err("items", l, None, "expected a list".into()));
                    return;
                }
            };
            for i in 0..count {
                let item = if base.is_empty() {
                    format!("items[{i}]")
                } else {
                    format!("{base}.items[{i}]")
                };
                self.load_object(path, doc, item, repaired);
            }
            return;
        }

        let (group_raw, version) = match api_version.rsplit_once('/') {
            Some((g, v)) => (g, v.trim()),
            None => ("", api_version.trim()),
        };
        let group = group_raw
            .trim_start_matches(|c: char| c == '.' || c.is_whitespace())
            .trim_end()
            .to_ascii_lowercase();
        let skip = |st: &mut LoadState| {
            tracing::info!(
                file = %path.display(), line, api_version = %api_version, kind = %kind,
                name = meta_name.as_deref().unwrap_or("-"),
                "skipping object: not an Istio networking resource Egret reads"
            );
            st.loaded.skipped.push(Skipped {
                file: path.to_path_buf(),
                line,
                api_version: api_version.clone(),
                kind: kind.clone(),
                namespace: meta_ns.clone(),
                name: meta_name.clone(),
            });
        };
        let resource_label = || {
            format!(
                "{kind} {}/{}",
                meta_ns.as_deref().unwrap_or(&self.loaded.options.namespace),
                meta_name.as_deref().unwrap_or("-")
            )
        };

        if group != ISTIO_NETWORKING_GROUP {
            if group.ends_with("istio.io") || group == "gateway.networking.k8s.io" {
                // These change what a gateway does; ignoring them silently would be wrong.
                self.loaded.warnings.push(Diagnostic {
                    severity: Severity::Warning,
                    file: path.to_path_buf(),
                    line,
                    resource: Some(resource_label()),
                    field: None,
                    message: format!("{api_version} {kind} is not supported yet; ignored"),
                });
            }
            skip(self);
            return;
        }
        let Some(k) = Kind::parse(&kind) else {
            self.loaded.warnings.push(Diagnostic {
                severity: Severity::Warning,
                file: path.to_path_buf(),
                line,
                resource: Some(resource_label()),
                field: None,
                message: format!("kind {kind} is not supported yet; ignored"),
            });
            skip(self);
            return;
        };
        if !ISTIO_NETWORKING_VERSIONS.contains(&version) {
            self.errors.push(err(
                "apiVersion",
                api_line,
                Some(resource_label()),
                format!(
                    "unknown version {version:?} of {ISTIO_NETWORKING_GROUP} (expected one of {})",
                    ISTIO_NETWORKING_VERSIONS.join(", ")
                ),
            ));
            return;
        }
        let normalized = format!("{ISTIO_NETWORKING_GROUP}/{version}");
        if group_raw != ISTIO_NETWORKING_GROUP || repaired.contains(&api_line) {
            let mut message = format!("{api_version:?} read as {normalized:?}");
            if repaired.contains(&api_line) {
                message.push_str(" (a space was missing after `apiVersion:`)");
            }
            self.loaded.warnings.push(Diagnostic {
                severity: Severity::Warning,
                file: path.to_path_buf(),
                line: api_line,
                resource: Some(resource_label()),
                field: Some("apiVersion".into()),
                message,
            });
        }

        let source = Source {
            file: path.to_path_buf(),
            line,
            doc,
            base,
        };
        match k {
            Kind::ServiceEntry => {
                if let Some(r) = self.decode::<ServiceEntrySpec>(k, normalized, source) {
                    self.loaded.service_entries.push(r);
                }
            }
            Kind::Gateway => {
                if let Some(r) = self.decode::<GatewaySpec>(k, normalized, source) {
                    self.loaded.gateways.push(r);
                }
            }
            Kind::VirtualService => {
                if let Some(r) = self.decode::<VirtualServiceSpec>(k, normalized, source) {
                    self.loaded.virtual_services.push(r);
                }
            }
            Kind::DestinationRule => {
                if let Some(r) = self.decode::<DestinationRuleSpec>(k, normalized, source) {
                    self.loaded.destination_rules.push(r);
                }
            }
        }
    }

    fn decode<S>(&mut self, kind: Kind, api_version: String, source: Source) -> Option<Resource<S>>
    where
        S: for<'a> serde::Deserialize<'a> + Default + validate::Validate,
    {
        let options = self.loaded.options.clone();
        let node = object_node_in(&self.loaded.docs, source.doc, &source.base)?;
        let ctx = DeContext::default();
        let parsed = node::from_node::<Object<S>>(node, "", &ctx);
        let meta_name = node
            .at("metadata.name")
            .and_then(Node::as_str)
            .map(str::to_string);
        let meta_ns = node
            .at("metadata.namespace")
            .and_then(Node::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| options.namespace.clone());
        let label = format!("{kind} {meta_ns}/{}", meta_name.as_deref().unwrap_or("-"));
        for u in ctx.unknown.into_inner() {
            self.loaded.warnings.push(Diagnostic {
                severity: Severity::Warning,
                file: source.file.clone(),
                line: u.line,
                resource: Some(label.clone()),
                field: Some(u.path),
                message: "unknown field (misspelled, or not supported by Egret yet); ignored"
                    .into(),
            });
        }
        let obj = match parsed {
            Ok(o) => o,
            Err(e) => {
                self.errors.push(Diagnostic {
                    severity: Severity::Error,
                    file: source.file.clone(),
                    line: e.line,
                    resource: Some(label),
                    field: e.path.filter(|p| !p.is_empty()),
                    message: e.message,
                });
                return None;
            }
        };
        let Some(name) = obj.metadata.name.clone().filter(|n| !n.trim().is_empty()) else {
            self.errors.push(Diagnostic {
                severity: Severity::Error,
                file: source.file.clone(),
                line: node.line_of("metadata.name"),
                resource: Some(label),
                field: Some("metadata.name".into()),
                message: "required field is missing".into(),
            });
            return None;
        };
        let namespace = obj
            .metadata
            .namespace
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or(meta_ns);
        let res = Resource {
            kind,
            name,
            namespace,
            api_version,
            metadata: obj.metadata,
            spec: obj.spec,
            source,
        };
        let mut rep = validate::Reporter::new(node, &res.source.file, res.id());
        res.spec.validate(&mut rep, &options, &res.namespace);
        self.errors.append(&mut rep.errors);
        self.loaded.warnings.append(&mut rep.warnings);
        Some(res)
    }
}

fn object_node_in<'a>(docs: &'a [Node], doc: usize, base: &str) -> Option<&'a Node> {
    let d = docs.get(doc)?;
    if base.is_empty() {
        Some(d)
    } else {
        d.at(base)
    }
}

/// What the loader needs to know of an object before decoding it.
#[derive(Clone)]
struct Head {
    line: u32,
    is_map: bool,
    /// `Ok(Some((value, line)))`, `Ok(None)` when absent, `Err(line)` when not a string.
    kind: Result<Option<(String, u32)>, u32>,
    api_version: Result<Option<(String, u32)>, u32>,
    meta_name: Option<String>,
    meta_ns: Option<String>,
    /// `items` of a list: `Ok(count)`, `Err(line)` when not a list.
    items: Option<Result<usize, u32>>,
}

impl Head {
    fn read(node: &Node) -> Head {
        let str_field = |name: &str| -> Result<Option<(String, u32)>, u32> {
            match node.get(name) {
                None
                | Some(Node {
                    value: Value::Null, ..
                }) => Ok(None),
                Some(n) => match n.as_str() {
                    Some(s) => Ok(Some((s.to_string(), node.line_of(name)))),
                    None => Err(node.line_of(name)),
                },
            }
        };
        Head {
            line: node.line,
            is_map: matches!(node.value, Value::Map(_)),
            kind: str_field("kind"),
            api_version: str_field("apiVersion"),
            meta_name: node
                .at("metadata.name")
                .and_then(Node::as_str)
                .map(str::to_string),
            meta_ns: node
                .at("metadata.namespace")
                .and_then(Node::as_str)
                .map(str::to_string),
            items: node.get("items").map(|n| match &n.value {
                Value::Seq(items) => Ok(items.len()),
                Value::Null => Ok(0),
                _ => Err(node.line_of("items")),
            }),
        }
    }
}

/// Duplicate detection key.
pub(crate) type ResourceKey = (Kind, String, String);

pub(crate) fn first_locations(loaded: &Loaded) -> BTreeMap<ResourceKey, Vec<(PathBuf, u32)>> {
    let mut m: BTreeMap<ResourceKey, Vec<(PathBuf, u32)>> = BTreeMap::new();
    fn add<T>(m: &mut BTreeMap<ResourceKey, Vec<(PathBuf, u32)>>, rs: &[Resource<T>]) {
        for r in rs {
            m.entry((r.kind, r.namespace.clone(), r.name.clone()))
                .or_default()
                .push((r.source.file.clone(), r.source.line));
        }
    }
    add(&mut m, &loaded.service_entries);
    add(&mut m, &loaded.gateways);
    add(&mut m, &loaded.virtual_services);
    add(&mut m, &loaded.destination_rules);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repairs_missing_space_after_api_version() {
        let (t, lines) = repair_api_version_lines(
            "apiVersion:.NETworking.istio.io/v1alpha3\nkind: X\n- apiVersion:v1\napiVersion: ok\n",
        );
        assert_eq!(t, "apiVersion: .NETworking.istio.io/v1alpha3\nkind: X\n- apiVersion: v1\napiVersion: ok\n");
        assert_eq!(lines, vec![1, 3]);
    }
}
