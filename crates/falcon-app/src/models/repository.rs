//! The model repository file (`MODEL_REPOSITORY`): which models a worker serves, from
//! where, and which one answers a request that names none.
//!
//! ```toml
//! default = "sentiment"
//! [models.sentiment]
//! backend = "tfidf"                  # no path: the model built into the binary
//! [models.topics]
//! backend = "tfidf"
//! path = "/srv/falcon/topics.bin"    # relative paths are relative to this file
//! ```
//!
//! Without a file a worker serves one model, `sentiment`, from `MODEL_BACKEND` and
//! `MODEL_PATH`: zero-config stays zero-config. Every check that can be made without loading
//! a model is made here, and each failure names the model.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// The name of the one model a worker serves without a repository file.
pub const DEFAULT_MODEL: &str = "sentiment";

/// The longest model name (it is a URL segment, a metric label and a log column).
pub const MAX_NAME_LEN: usize = 64;

/// One model of the repository: how to load it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelSpec {
    pub name: String,
    /// Which backend loads it (`tfidf`, ...).
    pub backend: String,
    /// Its file (`path`) or directory (`dir`); `None`: the backend's built-in model.
    pub location: Option<PathBuf>,
}

/// The models a worker serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Repository {
    /// The model that answers a request naming none; it cannot be unloaded.
    pub default: String,
    pub models: BTreeMap<String, ModelSpec>,
    /// The file it was read from (`None`: the zero-config repository).
    pub file: Option<PathBuf>,
}

/// Why a repository cannot be served.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("model repository {file}: {message}")]
pub struct RepositoryError {
    pub file: String,
    pub message: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    default: Option<String>,
    #[serde(default)]
    models: BTreeMap<String, Entry>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Entry {
    backend: String,
    path: Option<PathBuf>,
    dir: Option<PathBuf>,
}

/// A model name: 1 to 64 of ASCII letters, digits, `_`, `.` and `-`, starting with a letter
/// or a digit (it is a path segment, a metric label value and a log column).
pub fn valid_name(name: &str) -> bool {
    let mut bytes = name.bytes();
    bytes.next().is_some_and(|b| b.is_ascii_alphanumeric())
        && name.len() <= MAX_NAME_LEN
        && bytes.all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'))
}

impl Repository {
    /// The zero-config repository: one model, `sentiment`, from `backend` and `location`.
    pub fn single(backend: &str, location: Option<&Path>) -> Self {
        let spec = ModelSpec {
            name: DEFAULT_MODEL.to_owned(),
            backend: backend.to_owned(),
            location: location.map(Path::to_path_buf),
        };
        Self {
            default: DEFAULT_MODEL.to_owned(),
            models: BTreeMap::from([(DEFAULT_MODEL.to_owned(), spec)]),
            file: None,
        }
    }

    /// Reads and checks the file; `backends` are the backends this build knows.
    pub fn read(file: &Path, backends: &[&str]) -> Result<Self, RepositoryError> {
        let error = |message: String| RepositoryError { file: file.display().to_string(), message };
        let text = std::fs::read_to_string(file).map_err(|e| error(format!("cannot read it: {e}")))?;
        let base = file.parent().unwrap_or(Path::new("."));
        let mut repository = Self::parse(&text, base, backends).map_err(error)?;
        repository.file = Some(file.to_path_buf());
        Ok(repository)
    }

    /// Parses a repository's text; relative paths are taken from `base`.
    pub fn parse(text: &str, base: &Path, backends: &[&str]) -> Result<Self, String> {
        let parsed: File = toml::from_str(text).map_err(|e| e.to_string().trim_end().to_owned())?;
        if parsed.models.is_empty() {
            return Err("it names no model: add a [models.NAME] table with a backend".into());
        }
        let mut models = BTreeMap::new();
        for (name, entry) in parsed.models {
            if !valid_name(&name) {
                return Err(format!(
                    "model {name:?}: a name is 1 to {MAX_NAME_LEN} letters, digits, '_', '.' or '-', starting with a letter or a digit"
                ));
            }
            if !backends.contains(&entry.backend.as_str()) {
                return Err(format!(
                    "model {name:?}: unknown backend {:?}; this build has: {}",
                    entry.backend,
                    backends.join(", ")
                ));
            }
            let location = match (entry.path, entry.dir) {
                (Some(_), Some(_)) => return Err(format!("model {name:?}: give either `path` or `dir`, not both")),
                (one, other) => one.or(other).map(|p| if p.is_relative() { base.join(p) } else { p }),
            };
            models.insert(name.clone(), ModelSpec { name, backend: entry.backend, location });
        }
        let default = match parsed.default {
            Some(default) if models.contains_key(&default) => default,
            Some(default) => {
                return Err(format!(
                    "default model {default:?} is not among the models ({})",
                    models.keys().cloned().collect::<Vec<_>>().join(", ")
                ));
            }
            None if models.len() == 1 => models.keys().next().cloned().unwrap_or_default(),
            None => return Err("it has several models and no `default = \"NAME\"`".into()),
        };
        Ok(Self { default, models, file: None })
    }

    /// Where the repository comes from, for messages: its file, or the environment.
    pub fn source(&self) -> String {
        self.file.as_ref().map_or_else(|| "MODEL_BACKEND / MODEL_PATH".to_owned(), |f| f.display().to_string())
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const BACKENDS: &[&str] = &["tfidf", "minilm"];

    fn parse(text: &str) -> Result<Repository, String> {
        Repository::parse(text, Path::new("/srv/falcon"), BACKENDS)
    }

    #[test]
    fn the_issue_s_example_reads_with_relative_paths_from_the_file() {
        let r = parse(
            r#"
            default = "sentiment"
            [models.sentiment]
            backend = "tfidf"
            [models.topics]
            backend = "tfidf"
            path = "topics.bin"
            [models.sentiment-minilm]
            backend = "minilm"
            dir = "/opt/all-MiniLM-L6-v2"
            "#,
        )
        .unwrap();
        assert_eq!(r.default, "sentiment");
        assert_eq!(r.models.len(), 3);
        assert_eq!(r.models["sentiment"].location, None);
        assert_eq!(r.models["topics"].location.as_deref(), Some(Path::new("/srv/falcon/topics.bin")));
        assert_eq!(r.models["sentiment-minilm"].location.as_deref(), Some(Path::new("/opt/all-MiniLM-L6-v2")));
        assert_eq!(r.models["sentiment-minilm"].backend, "minilm");
    }

    #[test]
    fn one_model_is_the_default_without_saying_so() {
        let r = parse("[models.topics]\nbackend = \"tfidf\"\npath = \"/t.bin\"\n").unwrap();
        assert_eq!(r.default, "topics");
    }

    #[test]
    fn each_bad_file_is_refused_naming_what_is_wrong() {
        let cases = [
            ("default = \"a\"\n", "names no model"),
            (
                "[models.a]\nbackend = \"onnx\"\n",
                "model \"a\": unknown backend \"onnx\"; this build has: tfidf, minilm",
            ),
            ("[models.a]\nbackend = \"tfidf\"\n[models.b]\nbackend = \"tfidf\"\n", "no `default"),
            ("default = \"c\"\n[models.a]\nbackend = \"tfidf\"\n", "default model \"c\" is not among the models (a)"),
            ("[models.\"bad name\"]\nbackend = \"tfidf\"\n", "model \"bad name\": a name is"),
            ("[models.a]\nbackend = \"tfidf\"\npath = \"x\"\ndir = \"y\"\n", "either `path` or `dir`"),
            ("[models.a]\nbackend = \"tfidf\"\nweights = \"x\"\n", "unknown field `weights`"),
            ("[models.a]\nbackend = \"tfidf\"\n[models.a]\nbackend = \"tfidf\"\n", "duplicate"),
            ("[models.a]\npath = \"x\"\n", "missing field `backend`"),
        ];
        for (text, expected) in cases {
            let e = parse(text).unwrap_err();
            assert!(e.contains(expected), "{text:?}: {e}");
        }
    }

    #[test]
    fn names_are_url_and_label_safe() {
        for ok in ["sentiment", "sentiment-minilm", "topics_v2", "a.b", "A1", &"x".repeat(64)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in ["", "-a", ".a", "a/b", "a b", "é", "a:b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad}");
        }
    }

    #[test]
    fn a_missing_file_names_itself() {
        let e = Repository::read(Path::new("/nonexistent/models.toml"), BACKENDS).unwrap_err();
        assert!(e.to_string().starts_with("model repository /nonexistent/models.toml: cannot read it"), "{e}");
    }

    #[test]
    fn zero_config_is_one_model_named_sentiment() {
        let r = Repository::single("tfidf", None);
        assert_eq!(r.default, DEFAULT_MODEL);
        assert_eq!(r.models[DEFAULT_MODEL].backend, "tfidf");
        assert_eq!(r.source(), "MODEL_BACKEND / MODEL_PATH");
    }
}
