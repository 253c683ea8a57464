//! `helm template`, emulated for deploy/helm/netfence: no Helm binary can be installed
//! here, so the chart is rendered with gtmpl-ng (Go's text/template in Rust) and the
//! Helm functions the chart uses, written below after Helm's and Sprig's Go source:
//! `toYaml`, `nindent` (and the `indent` it is made of), `quote`, `default`, `int`. Values are the chart's
//! values.yaml with overrides merged as `helm --set`/`-f` merge them (maps
//! recursively, anything else replaced, `null` deletes). Each template's output is
//! split into documents as Helm splits it, and documents that parse to nothing are
//! dropped. Stricter than Helm where the two could part: a render that prints
//! `<no value>` (a missing value; Helm prints nothing) fails, and so do the argument
//! kinds whose Go formatting is not emulated (non-ASCII for `quote`, a map for
//! `quote`, a string that is not plain decimal for `int`).

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use gtmpl_ng::{Context, FuncError, Number, NumberKind, Template, Value};
use serde_json::Value as Json;

pub fn chart_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/helm/netfence")
}

/// A YAML file as JSON (the shape Helm reads values and Chart.yaml into).
pub fn read_yaml(path: &Path) -> Json {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let yaml: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::to_value(yaml).unwrap()
}

/// `helm template RELEASE CHART -n NAMESPACE [--set ...]`: the rendered objects of
/// every manifest template (`templates/*.yaml`, not `_*`), in file order, and
/// NOTES.txt.
#[derive(Debug)]
pub struct Rendered {
    pub objects: Vec<Json>,
    pub notes: String,
}

pub fn render(overrides: &Json) -> Result<Rendered, String> {
    let dir = chart_dir();
    let context = to_value(&context(overrides));
    render_templates(&dir, &context)
}

/// What the templates see: `.Values` (values.yaml with the overrides merged),
/// `.Release` (release `netfence` in `kube-system`, an install) and `.Chart`.
pub fn context(overrides: &Json) -> Json {
    let dir = chart_dir();
    let mut values = read_yaml(&dir.join("values.yaml"));
    coalesce(&mut values, overrides);
    let chart = read_yaml(&dir.join("Chart.yaml"));
    Json::Object(serde_json::Map::from_iter([
        ("Values".to_owned(), values),
        (
            "Release".to_owned(),
            serde_json::json!({
                "Name": "netfence",
                "Namespace": "kube-system",
                "Service": "Helm",
                "IsInstall": true,
                "IsUpgrade": false,
                "Revision": 1,
            }),
        ),
        // Helm's .Chart: the Chart.yaml fields, capitalised.
        (
            "Chart".to_owned(),
            serde_json::json!({
                "Name": chart["name"],
                "Version": chart["version"],
                "AppVersion": chart["appVersion"],
                "Description": chart["description"],
                "Type": chart["type"],
            }),
        ),
    ]))
}

fn render_templates(dir: &Path, context: &Value) -> Result<Rendered, String> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir.join("templates"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    let mut outputs = Vec::new();
    for file in files {
        let name = file.file_name().unwrap().to_str().unwrap().to_owned();
        if !name.starts_with('_') {
            outputs.push((name, render_file(&file, context)?));
        }
    }
    collect(outputs)
}

/// Each template's output (by file name) split into documents and parsed, as Helm
/// does with them; NOTES.txt kept as text.
fn collect(outputs: Vec<(String, String)>) -> Result<Rendered, String> {
    let mut objects = Vec::new();
    let mut notes = String::new();
    for (name, text) in outputs {
        if name == "NOTES.txt" {
            notes = text;
        } else if name.ends_with(".yaml") {
            for document in split_manifests(&text) {
                let yaml: serde_yaml_ng::Value = serde_yaml_ng::from_str(&document)
                    .map_err(|e| format!("{name}: {e}\n{document}"))?;
                if !yaml.is_null() {
                    objects.push(serde_json::to_value(yaml).unwrap());
                }
            }
        } else {
            return Err(format!(
                "{name}: not a manifest (.yaml), NOTES.txt or a partial (_*)"
            ));
        }
    }
    Ok(Rendered { objects, notes })
}

/// The same chart rendered by `gorender` (helm_chart/gorender.go: Go's text/template
/// with Sprig, as Helm's engine sets them up), given the same context on stdin.
pub fn render_with_go(program: &Path, overrides: &Json) -> Result<Rendered, String> {
    use std::io::Write as _;
    let mut child = std::process::Command::new(program)
        .arg(chart_dir())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| format!("{}: {e}", program.display()))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(context(overrides).to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if !out.status.success() {
        return Err(format!("{}: {}", program.display(), out.status));
    }
    let text = String::from_utf8(out.stdout).unwrap();
    let outputs = text
        .split("##### ")
        .skip(1)
        .map(|section| {
            let (name, body) = section.split_once('\n').unwrap();
            (name.to_owned(), body.to_owned())
        })
        .collect();
    collect(outputs)
}

fn render_file(file: &Path, context: &Value) -> Result<String, String> {
    let source = std::fs::read_to_string(file).unwrap();
    let name = file.file_name().unwrap().to_string_lossy().into_owned();
    let mut template = Template::default();
    template.add_funcs(&[
        ("toYaml", to_yaml as gtmpl_ng::Func),
        ("nindent", nindent),
        ("indent", indent),
        ("quote", quote),
        ("default", default),
        ("int", int),
    ]);
    template
        .parse(source)
        .map_err(|e| format!("{name}: parse: {e}"))?;
    let out = template
        .render(&Context::from(context.clone()))
        .map_err(|e| format!("{name}: {e}"))?;
    if out.contains("<no value>") {
        return Err(format!("{name}: a missing value was rendered:\n{out}"));
    }
    Ok(out)
}

/// Helm's releaseutil.SplitManifests: documents separated by `---` at a line start
/// (`(?:^|\s*\n)---\s*`), blank ones dropped.
fn split_manifests(text: &str) -> Vec<String> {
    let mut documents = vec![String::new()];
    for line in text.lines() {
        assert!(
            !line.starts_with("---") || line.trim_end() == "---",
            "a separator with more on its line: {line:?} (not emulated)"
        );
        if line.trim_end() == "---" {
            documents.push(String::new());
        } else {
            let last = documents.last_mut().unwrap();
            last.push_str(line);
            last.push('\n');
        }
    }
    documents
        .into_iter()
        .filter(|d| !d.trim().is_empty())
        .collect()
}

/// Helm's chartutil.CoalesceValues for user values over the chart's: maps merge key
/// by key, anything else replaces, and a `null` deletes the key.
pub fn coalesce(base: &mut Json, overrides: &Json) {
    let Json::Object(overrides) = overrides else {
        return;
    };
    let Json::Object(base) = base else {
        panic!("values are not a map");
    };
    for (key, value) in overrides {
        match (base.get_mut(key), value) {
            (_, Json::Null) => {
                base.remove(key);
            }
            (Some(existing @ Json::Object(_)), Json::Object(_)) => coalesce(existing, value),
            _ => {
                base.insert(key.clone(), value.clone());
            }
        }
    }
}

fn to_value(json: &Json) -> Value {
    match json {
        Json::Null => Value::Nil,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => match (n.as_i64(), n.as_f64()) {
            (Some(i), _) => Value::from(i),
            (None, Some(f)) => Value::from(f),
            _ => panic!("{n}: out of range"),
        },
        Json::String(s) => Value::from(s.as_str()),
        Json::Array(items) => Value::Array(items.iter().map(to_value).collect()),
        Json::Object(map) => Value::Map(
            map.iter()
                .map(|(k, v)| (k.clone(), to_value(v)))
                .collect::<HashMap<_, _>>(),
        ),
    }
}

fn to_json(value: &Value) -> Result<Json, FuncError> {
    Ok(match value {
        Value::NoValue | Value::Nil => Json::Null,
        Value::Bool(b) => Json::Bool(*b),
        Value::String(s) => Json::String(s.clone()),
        Value::Number(n) => number_json(n),
        Value::Array(items) => Json::Array(items.iter().map(to_json).collect::<Result<_, _>>()?),
        // Sorted keys, as sigs.k8s.io/yaml writes them.
        Value::Map(map) | Value::Object(map) => Json::Object(
            map.iter()
                .map(|(k, v)| Ok((k.clone(), to_json(v)?)))
                .collect::<Result<std::collections::BTreeMap<_, _>, FuncError>>()?
                .into_iter()
                .collect(),
        ),
        Value::Function(_) => return Err(FuncError::Generic("toYaml: a function".into())),
    })
}

fn number_json(n: &Number) -> Json {
    match n.kind() {
        NumberKind::Unsigned(u) => Json::from(u),
        NumberKind::Signed(i) => Json::from(i),
        NumberKind::Float(f) => Json::from(f),
    }
}

fn one<'a>(name: &str, args: &'a [Value]) -> Result<&'a Value, FuncError> {
    match args {
        [value] => Ok(value),
        _ => Err(FuncError::ExactlyXArgs(name.into(), 1)),
    }
}

fn string_arg(name: &str, value: &Value) -> Result<String, FuncError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        other => Err(FuncError::Generic(format!(
            "{name}: wants a string, got {other:?}"
        ))),
    }
}

/// Helm's `toYaml`: `yaml.Marshal` (sigs.k8s.io/yaml: through JSON, so map keys are
/// sorted and numbers are JSON numbers) with the one trailing newline trimmed. The
/// text differs from Go's in style (serde_yaml_ng quotes and indents its own way),
/// not in what it parses to, which is what the tests compare.
fn to_yaml(args: &[Value]) -> Result<Value, FuncError> {
    let json = to_json(one("toYaml", args)?)?;
    let text =
        serde_yaml_ng::to_string(&json).map_err(|e| FuncError::Generic(format!("toYaml: {e}")))?;
    Ok(Value::from(text.strip_suffix('\n').unwrap_or(&text)))
}

/// Sprig's `indent N TEXT`: every line of TEXT (the first included) prefixed by N
/// spaces.
fn indent(args: &[Value]) -> Result<Value, FuncError> {
    let [spaces, text] = args else {
        return Err(FuncError::ExactlyXArgs("indent".into(), 2));
    };
    let pad = " ".repeat(spaces_arg("indent", spaces)?);
    let text = string_arg("indent", text)?;
    Ok(Value::from(format!(
        "{pad}{}",
        text.replace('\n', &format!("\n{pad}"))
    )))
}

/// Sprig's `nindent N TEXT`: a newline, then `indent N TEXT`.
fn nindent(args: &[Value]) -> Result<Value, FuncError> {
    match indent(args)? {
        Value::String(s) => Ok(Value::from(format!("\n{s}"))),
        _ => unreachable!(),
    }
}

fn spaces_arg(name: &str, value: &Value) -> Result<usize, FuncError> {
    match value {
        Value::Number(n) => n
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| FuncError::Generic(format!("{name}: {n:?} spaces"))),
        other => Err(FuncError::Generic(format!(
            "{name}: wants a number of spaces, got {other:?}"
        ))),
    }
}

/// Sprig's `quote`: each non-nil argument as Go's `%q` of its `%v` text, joined by
/// spaces. `%v` is emulated for strings, booleans and integers; `%q` for ASCII.
fn quote(args: &[Value]) -> Result<Value, FuncError> {
    let mut out = Vec::new();
    for arg in args {
        let text = match arg {
            Value::NoValue | Value::Nil => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => match n.kind() {
                NumberKind::Unsigned(u) => u.to_string(),
                NumberKind::Signed(i) => i.to_string(),
                NumberKind::Float(f) => {
                    return Err(FuncError::Generic(format!(
                        "quote: {f}: Go's %v of a float is not emulated"
                    )));
                }
            },
            other => {
                return Err(FuncError::Generic(format!(
                    "quote: {other:?}: Go's %v of a collection is not emulated"
                )));
            }
        };
        out.push(go_quote(&text)?);
    }
    Ok(Value::from(out.join(" ")))
}

/// Go's strconv.Quote for ASCII text.
fn go_quote(text: &str) -> Result<String, FuncError> {
    let mut out = String::from('"');
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{7}' => out.push_str("\\a"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{b}' => out.push_str("\\v"),
            ' '..='~' => out.push(c),
            c if c.is_ascii() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => {
                return Err(FuncError::Generic(format!(
                    "quote: {c:?}: Go's %q of non-ASCII text is not emulated"
                )));
            }
        }
    }
    out.push('"');
    Ok(out)
}

/// Sprig's `empty`: nil, false, 0, and empty strings and collections.
fn empty(value: &Value) -> bool {
    match value {
        Value::NoValue | Value::Nil => true,
        Value::Bool(b) => !b,
        Value::String(s) => s.is_empty(),
        Value::Array(a) => a.is_empty(),
        Value::Map(m) | Value::Object(m) => m.is_empty(),
        Value::Number(n) => match n.kind() {
            NumberKind::Unsigned(u) => u == 0,
            NumberKind::Signed(i) => i == 0,
            NumberKind::Float(f) => f == 0.0,
        },
        Value::Function(_) => false,
    }
}

/// Sprig's `default DEFAULT [GIVEN]`: GIVEN unless it is missing or empty.
fn default(args: &[Value]) -> Result<Value, FuncError> {
    match args {
        [fallback] => Ok(fallback.clone()),
        [fallback, given] => Ok(if empty(given) { fallback } else { given }.clone()),
        _ => Err(FuncError::AtLeastXArgs("default".into(), 1)),
    }
}

/// Sprig's `int` (spf13/cast's ToInt): integers as they are, floats truncated,
/// booleans 1/0, nil 0, decimal strings parsed.
fn int(args: &[Value]) -> Result<Value, FuncError> {
    let value = one("int", args)?;
    let n: i64 = match value {
        Value::NoValue | Value::Nil => 0,
        Value::Bool(b) => i64::from(*b),
        Value::Number(n) => match n.kind() {
            NumberKind::Unsigned(u) => {
                i64::try_from(u).map_err(|_| FuncError::Generic(format!("int: {u} overflows")))?
            }
            NumberKind::Signed(i) => i,
            #[allow(
                clippy::cast_possible_truncation,
                reason = "Go's int(float64) truncates"
            )]
            NumberKind::Float(f) => f as i64,
        },
        Value::String(s)
            if s == "0" || (!s.starts_with('0') && s.bytes().all(|b| b.is_ascii_digit())) =>
        {
            s.parse()
                .map_err(|e| FuncError::Generic(format!("int: {s:?}: {e}")))?
        }
        other => {
            return Err(FuncError::Generic(format!("int: {other:?}: not emulated")));
        }
    };
    Ok(Value::from(n))
}

#[test]
fn the_helm_functions_follow_helm() {
    let render = |source: &str| {
        let mut template = Template::default();
        template.add_funcs(&[
            ("toYaml", to_yaml as gtmpl_ng::Func),
            ("nindent", nindent),
            ("indent", indent),
            ("quote", quote),
            ("default", default),
            ("int", int),
        ]);
        template.parse(source).unwrap();
        let context = to_value(&serde_json::json!({
            "m": {"b": [1, "x"], "a": true},
            "e": {},
            "s": "",
            "t": "v",
            "n": 9896,
            "f": 2.5,
        }));
        template
            .render(&Context::from(context))
            .map_err(|e| e.to_string())
    };
    // The outputs Helm 3 gives for the same templates and values (Sprig v3).
    assert_eq!(render("{{ toYaml .m }}").unwrap(), "a: true\nb:\n- 1\n- x");
    assert_eq!(
        render("x:{{ toYaml .m | nindent 2 }}").unwrap(),
        "x:\n  a: true\n  b:\n  - 1\n  - x"
    );
    assert_eq!(render("{{ toYaml .e }}").unwrap(), "{}");
    assert_eq!(render("{{ \"a\\nb\" | indent 1 }}").unwrap(), " a\n b");
    assert_eq!(
        render("{{ quote .t .n true .missing }}").unwrap(),
        "\"v\" \"9896\" \"true\""
    );
    assert_eq!(
        render("{{ \"a\\\"b\\\\c\\td\" | quote }}").unwrap(),
        "\"a\\\"b\\\\c\\td\""
    );
    assert_eq!(render("{{ .s | default \"d\" }}|{{ .t | default \"d\" }}|{{ .e | default 1 }}|{{ 0 | default 2 }}").unwrap(), "d|v|1|2");
    assert_eq!(
        render("{{ int .n }} {{ int .f }} {{ int \"42\" }} {{ int true }}").unwrap(),
        "9896 2 42 1"
    );
    assert!(
        render("{{ int \"0x10\" }}").is_err(),
        "not emulated: refused"
    );
    assert!(render("{{ quote .m }}").is_err(), "not emulated: refused");
    // text/template itself: an empty map or string is false for `with` and `if`.
    assert_eq!(
        render("{{ with .e }}x{{ else }}y{{ end }}{{ if .s }}x{{ else }}y{{ end }}").unwrap(),
        "yy"
    );
    assert_eq!(
        split_manifests("a: 1\n---\n\n--- \nb: 2\n---\n"),
        ["a: 1\n", "b: 2\n"]
    );
}
