//! The file source: Kubernetes manifests in a directory tree, loaded into the world and followed
//! as they change.
//!
//! # What is read
//!
//! Every `*.yaml`, `*.yml` and `*.json` file under the directory, recursively, in path order.
//! Entries whose name starts with `.` below the directory are skipped: dotfiles, Emacs `.#` lock
//! files, Vim's `.*.swp`, and Kubernetes' `..2024_…` volume directories (a ConfigMap mount's
//! top-level symlinks are read instead). Other editor leftovers (`*~`, `*.swp`) fail the extension
//! test. Symlinks to files are followed (though only changes inside the directory are noticed);
//! symlinked directories are not entered, so a link cycle cannot trap a scan.
//!
//! A YAML file holds any number of `---` documents, a JSON file one object, and a `v1` `List`
//! document contributes its `items`. Knative `Ingress` and `ClusterIngress`
//! (`networking.internal.knative.dev/v1alpha1`), Knative Serving's `Route` (`v1`, and the older
//! `v1beta1` and `v1alpha1`) and `Configuration`, `v1` `Service`, `Endpoints`, `Secret` and
//! `ConfigMap`, and `discovery.k8s.io/v1` `EndpointSlice` are used; other kinds are skipped with
//! a debug log. A Route remembers its file, for `sluice rollout`.
//! Objects are stored as the API server would hold them: a namespaced object without a namespace
//! is in `default`, a `ClusterIngress` has none, and a `Secret`'s `stringData` is folded into
//! `data`.
//!
//! # Limits
//!
//! A file is read as a stream, one document at a time, and a `List`'s items of kinds sluice does
//! not use are dropped as they are read: a file of any number of documents, or a whole
//! cluster's `kubectl get -A -o yaml` dump, costs the memory of the objects sluice uses. What is
//! refused, with a message that names the limit: a file over 256 MiB (unread), values nested
//! over 128 levels, and YAML aliases that would expand one document by over 100,000 events (an
//! alias bomb).
//!
//! # A broken file never removes anything
//!
//! Files are edited by hand, and a typo must not take routes down. So:
//!
//! - A file that cannot be read or is not valid YAML/JSON keeps contributing exactly what it did
//!   before, and is reported.
//! - In a file whose documents parse but some of them cannot be used (a field of the wrong type,
//!   no name, no kind), the good documents are applied and each bad one is reported. Nothing the
//!   file provided before is deleted while any of its documents is bad: the objects a bad
//!   document held keep their last good version. An object the file merely stopped mentioning is
//!   deleted once the file is clean again.
//!
//! Every problem is a [`FileError`] in the [`Load`] and a `warn` log line.
//!
//! # Duplicates
//!
//! When several files define the same object, the lexicographically first path wins (within a
//! file, the first document); the others are shadowed, not merged, and a warning is logged once
//! for as long as the duplicate lasts. Removing or changing the winning file promotes the next.

use std::collections::{BTreeMap, BTreeSet, btree_map};
use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io::{self, Read as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use notify::Watcher as _;
use notify::event::{AccessKind, AccessMode, EventKind};
use rayon::iter::{IntoParallelIterator, ParallelIterator};
use serde::de::{self, DeserializeOwned};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use tokio::sync::mpsc;

use crate::knative::{self, IngressKind};
use crate::source::{Batch, Batches};
use crate::world::{Kept, Object, ObjectKey, SourceEvent};

const DEFAULT_NAMESPACE: &str = "default";
/// An editor's save is several events; once this long passes without one, the save is done.
const QUIET_PERIOD: Duration = Duration::from_millis(3);
/// A steady stream of writes must still be served eventually.
const MAX_DELAY: Duration = Duration::from_millis(500);
/// Batches waiting for a slow consumer; beyond that the watcher waits, and changes pile up as
/// paths to reload rather than as batches.
const BATCH_QUEUE: usize = 16;
/// The largest manifest file read: far above a `kubectl get -A -o yaml` dump of the kinds
/// sluice uses in a big cluster, far below what would strain memory (of a bigger file, nothing
/// is read). Kubernetes itself keeps an object under 1.5 MiB.
const MAX_FILE_BYTES: u64 = 256 << 20;
/// How deep values may nest: serde_json's own limit. A Kubernetes object needs a dozen levels, a
/// CustomResourceDefinition's schema in a dump may need sixty.
const MAX_DEPTH: usize = 128;
/// The parsers recurse once per level, some 20 KiB a level in a debug build: room for
/// [`MAX_DEPTH`] levels many times over. Only the pages used are ever touched.
const PARSE_STACK_BYTES: usize = 64 << 20;
/// Events one YAML document may replay through aliases.
const MAX_ALIAS_EVENTS: usize = 100_000;
const FILE_ADVICE: &str = "fix the file; until then the objects it provided before are kept";
const DOCUMENT_ADVICE: &str =
    "fix this document; until then the objects this file provided before are kept";

/// What one load or reload found: events to apply to the world, and problems to report.
#[derive(Debug, Default)]
pub struct Load {
    pub events: Vec<SourceEvent>,
    pub errors: Vec<FileError>,
    /// Objects kept at their last good version because the file holding them is broken now.
    pub kept: Vec<Kept>,
    /// Files read cleanly (or removed) in this batch: whatever they held is current again.
    pub healthy: Vec<String>,
    /// Set on the first full load, the one that makes the world complete.
    pub initial: bool,
}

impl From<Load> for Batch {
    fn from(load: Load) -> Batch {
        Batch {
            events: load.events,
            kept: load.kept,
            healthy: load.healthy,
            problems: load.errors.len(),
            initial: load.initial,
        }
    }
}

impl Load {
    fn is_empty(&self) -> bool {
        self.events.is_empty() && self.errors.is_empty() && self.healthy.is_empty()
    }
}

/// A file, or a document in it, that could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{}: {message}", .path.display(), document_label(.document))]
pub struct FileError {
    pub path: PathBuf,
    /// The document's position among the file's non-empty documents, counting from 1; `None`
    /// when the file as a whole could not be used.
    pub document: Option<usize>,
    pub message: String,
}

impl Kept {
    fn new(key: &ObjectKey, error: &FileError) -> Kept {
        Kept {
            key: key.clone(),
            origin: error.path.display().to_string(),
            problem: error.to_string(),
        }
    }
}

fn document_label(document: &Option<usize>) -> String {
    document.map_or_else(String::new, |n| format!(" (document {n})"))
}

#[derive(Debug, thiserror::Error)]
pub enum FileSourceError {
    #[error(
        "manifest directory {} does not exist; create it or point sluice at the directory that holds the manifests",
        .dir.display()
    )]
    Missing { dir: PathBuf },
    #[error(
        "manifest directory {} is not a directory; point sluice at the directory that holds the manifests",
        .dir.display()
    )]
    NotADirectory { dir: PathBuf },
    #[error("cannot list manifest directory {}; check that sluice may read it", .dir.display())]
    Unreadable { dir: PathBuf, source: io::Error },
    #[error("cannot watch manifest directory {} for changes{}", .dir.display(), watch_hint(.source))]
    Watch { dir: PathBuf, source: notify::Error },
}

fn watch_hint(error: &notify::Error) -> &'static str {
    match error.kind {
        notify::ErrorKind::MaxFilesWatch => {
            " (the inotify watch limit is reached: raise the sysctl fs.inotify.max_user_watches)"
        }
        _ => "",
    }
}

type FileObjects = BTreeMap<ObjectKey, Object>;

/// A directory of manifests, and what each of its files contributes to the world.
#[derive(Debug)]
pub struct DirectorySource {
    dir: PathBuf,
    loaded: bool,
    /// Per file, the objects it provides: its last good state while it has errors.
    files: BTreeMap<PathBuf, FileObjects>,
    /// Per object, every file that defines it; the first one is served.
    providers: BTreeMap<ObjectKey, BTreeSet<PathBuf>>,
    /// Objects defined by several files that were already warned about.
    warned_duplicates: BTreeSet<ObjectKey>,
    /// Files whose last read had errors: reported healthy once they read cleanly again.
    broken: BTreeSet<PathBuf>,
}

impl DirectorySource {
    pub fn new(dir: impl Into<PathBuf>) -> Result<Self, FileSourceError> {
        let dir = dir.into();
        // Watcher events carry absolute paths, and changed paths are matched against files.
        let dir = std::path::absolute(&dir)
            .map_err(|source| FileSourceError::Unreadable { dir, source })?;
        match fs::metadata(&dir) {
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                return Err(FileSourceError::Missing { dir });
            }
            Err(source) => return Err(FileSourceError::Unreadable { dir, source }),
            Ok(meta) if !meta.is_dir() => return Err(FileSourceError::NotADirectory { dir }),
            Ok(_) => {}
        }
        if let Err(source) = fs::read_dir(&dir) {
            return Err(FileSourceError::Unreadable { dir, source });
        }
        Ok(DirectorySource {
            dir,
            broken: BTreeSet::new(),
            loaded: false,
            files: BTreeMap::new(),
            providers: BTreeMap::new(),
            warned_duplicates: BTreeSet::new(),
        })
    }

    /// Scans the whole directory.
    pub fn load_all(&mut self) -> Load {
        let dir = self.dir.clone();
        let mut batch = self.reload(std::slice::from_ref(&dir));
        batch.initial = !self.loaded;
        self.loaded = true;
        batch
    }

    /// Re-reads just these paths: a file is read again, a directory rescanned, and a path that
    /// no longer exists removes what was loaded from it. Paths outside the directory are ignored.
    pub fn reload(&mut self, paths: &[PathBuf]) -> Load {
        let mut scan = Scan::default();
        for path in paths {
            match std::path::absolute(path) {
                Ok(path) if path.starts_with(&self.dir) => self.locate(&path, &mut scan),
                _ => {
                    tracing::debug!(path = %path.display(), "ignoring a path outside the manifest directory")
                }
            }
        }
        let Scan {
            files: present,
            unlisted: _,
            gone,
            mut errors,
        } = scan;

        let mut changes: BTreeMap<PathBuf, Option<FileObjects>> = gone
            .into_iter()
            .filter(|path| !present.contains(path))
            .map(|path| (path, None))
            .collect();
        let mut kept = Vec::new();
        let mut clean: Vec<PathBuf> = changes.keys().cloned().collect();
        for (path, read) in read_files(present) {
            match read {
                FileRead::Gone => {
                    clean.push(path.clone());
                    changes.insert(path, None);
                }
                FileRead::Unusable(error) => {
                    let held = self.files.get(&path).into_iter().flatten();
                    kept.extend(held.map(|(key, _)| Kept::new(key, &error)));
                    self.broken.insert(path);
                    errors.push(error);
                }
                FileRead::Parsed {
                    mut objects,
                    errors: problems,
                } => {
                    match problems.first() {
                        Some(problem) => {
                            for (key, object) in self.files.get(&path).into_iter().flatten() {
                                if !objects.contains_key(key) {
                                    kept.push(Kept::new(key, problem));
                                    objects.insert(key.clone(), object.clone());
                                }
                            }
                            self.broken.insert(path.clone());
                        }
                        None => clean.push(path.clone()),
                    }
                    errors.extend(problems);
                    changes.insert(path, Some(objects));
                }
            }
        }
        for error in &errors {
            tracing::warn!("{error}");
        }
        let healthy = clean
            .into_iter()
            .filter(|path| self.broken.remove(path))
            .map(|path| path.display().to_string())
            .collect();
        Load {
            events: self.apply(changes),
            errors,
            kept,
            healthy,
            initial: false,
        }
    }

    /// Finds what a changed path means: the manifest files now under it, and the loaded files
    /// that are gone.
    fn locate(&self, path: &Path, scan: &mut Scan) {
        let relative = path.strip_prefix(&self.dir).unwrap_or(path);
        if relative.components().any(|c| is_hidden(c.as_os_str())) {
            return;
        }
        let root = relative.as_os_str().is_empty();
        // The directory itself may well be a symlink; only links below it are left alone.
        let entry = if root {
            fs::metadata(path).map(|meta| {
                if meta.is_dir() {
                    EntryKind::Dir
                } else {
                    EntryKind::Other
                }
            })
        } else {
            entry_kind(path)
        };
        match entry {
            Ok(EntryKind::Dir) => {
                let mut found = Scan::default();
                found.walk(path);
                let gone = self.loaded_under(path).filter(|file| {
                    !found.files.contains(*file)
                        && !found.unlisted.iter().any(|dir| file.starts_with(dir))
                });
                scan.gone.extend(gone.cloned());
                scan.files.append(&mut found.files);
                scan.errors.append(&mut found.errors);
            }
            // Losing the whole directory is far likelier an accident than a wish to serve nothing.
            _ if root => {
                let reason =
                    entry.map_or_else(|error| error.to_string(), |_| "not a directory".into());
                scan.errors.push(FileError {
                    path: path.to_owned(),
                    document: None,
                    message: format!(
                        "the manifest directory cannot be read ({reason}); restore it. Until then the objects loaded from it are kept"
                    ),
                });
            }
            Ok(EntryKind::Other) => scan.gone.extend(self.loaded_under(path).cloned()),
            Err(error) if is_gone(&error) => scan.gone.extend(self.loaded_under(path).cloned()),
            // An unreadable file: reading it reports the problem and keeps what it provided.
            Ok(EntryKind::File) | Err(_) => {
                if path.file_name().is_some_and(is_manifest_name) {
                    scan.files.insert(path.to_owned());
                }
            }
        }
    }

    /// The loaded files at or below `path`: a contiguous range, as paths order by component.
    fn loaded_under<'a>(&'a self, path: &'a Path) -> impl Iterator<Item = &'a PathBuf> + 'a {
        self.files
            .range(path.to_owned()..)
            .map(|(file, _)| file)
            .take_while(move |file| file.starts_with(path))
    }

    /// Replaces what the changed files provide and returns the events that take the world
    /// there: only objects whose served version changed.
    fn apply(&mut self, changes: BTreeMap<PathBuf, Option<FileObjects>>) -> Vec<SourceEvent> {
        let mut affected = BTreeSet::new();
        for (path, new) in &changes {
            affected.extend(
                self.files
                    .get(path)
                    .into_iter()
                    .flat_map(|o| o.keys().cloned()),
            );
            affected.extend(new.iter().flat_map(|o| o.keys().cloned()));
        }
        let before: BTreeMap<ObjectKey, Object> = affected
            .iter()
            .filter_map(|key| Some((key.clone(), self.served(key)?.clone())))
            .collect();

        for (path, new) in changes {
            for key in self
                .files
                .remove(&path)
                .into_iter()
                .flat_map(BTreeMap::into_keys)
            {
                if let Some(paths) = self.providers.get_mut(&key) {
                    paths.remove(&path);
                    if paths.is_empty() {
                        self.providers.remove(&key);
                    }
                }
            }
            if let Some(new) = new {
                for key in new.keys() {
                    self.providers
                        .entry(key.clone())
                        .or_default()
                        .insert(path.clone());
                }
                self.files.insert(path, new);
            }
        }

        let mut events = Vec::new();
        for key in affected {
            self.warn_if_duplicate(&key);
            match (before.get(&key), self.served(&key)) {
                (Some(_), None) => events.push(SourceEvent::Delete(key)),
                (old, Some(new)) if !old.is_some_and(|old| same(old, new)) => {
                    events.push(SourceEvent::Upsert(new.clone()));
                }
                _ => {}
            }
        }
        events
    }

    fn served(&self, key: &ObjectKey) -> Option<&Object> {
        let path = self.providers.get(key)?.first()?;
        self.files.get(path)?.get(key)
    }

    fn warn_if_duplicate(&mut self, key: &ObjectKey) {
        match self.providers.get(key) {
            Some(paths) if paths.len() > 1 => {
                if self.warned_duplicates.insert(key.clone()) {
                    let mut paths = paths.iter().map(|path| path.display().to_string());
                    let winner = paths.next().unwrap_or_default();
                    let others = paths.collect::<Vec<_>>().join(", ");
                    tracing::warn!(
                        "{key} is defined in several files: serving the one in {winner}, ignoring {others}; remove the extra definitions"
                    );
                }
            }
            _ => {
                self.warned_duplicates.remove(key);
            }
        }
    }
}

/// What a walk of a directory tree found.
#[derive(Default)]
struct Scan {
    files: BTreeSet<PathBuf>,
    /// Directories that could not be listed: the files loaded from them are not gone.
    unlisted: Vec<PathBuf>,
    gone: BTreeSet<PathBuf>,
    errors: Vec<FileError>,
}

impl Scan {
    fn walk(&mut self, dir: &Path) {
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(error) => return self.unlisted(dir, &error),
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => return self.unlisted(dir, &error),
            };
            let name = entry.file_name();
            if is_hidden(&name) {
                continue;
            }
            let path = entry.path();
            match entry_kind(&path) {
                Ok(EntryKind::Dir) => self.walk(&path),
                // Raced with a removal: whatever removed it reports the path too.
                Err(error) if is_gone(&error) => {}
                // An unreadable file is still listed: reading it reports the problem.
                Ok(EntryKind::File) | Err(_) if is_manifest_name(&name) => {
                    self.files.insert(path);
                }
                Ok(_) | Err(_) => {}
            }
        }
    }

    fn unlisted(&mut self, dir: &Path, error: &io::Error) {
        if is_gone(error) {
            return;
        }
        self.errors.push(FileError {
            path: dir.to_owned(),
            document: None,
            message: format!(
                "cannot list the directory: {error}; check its permissions. Until then the objects loaded from it are kept"
            ),
        });
        self.unlisted.push(dir.to_owned());
    }
}

enum EntryKind {
    Dir,
    File,
    /// Sockets, devices, and symlinks to directories.
    Other,
}

fn entry_kind(path: &Path) -> io::Result<EntryKind> {
    let meta = fs::symlink_metadata(path)?;
    if meta.is_dir() {
        return Ok(EntryKind::Dir);
    }
    let target = if meta.file_type().is_symlink() {
        fs::metadata(path)?
    } else {
        meta
    };
    Ok(if target.is_file() {
        EntryKind::File
    } else {
        EntryKind::Other
    })
}

fn is_gone(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
    )
}

fn is_hidden(name: &OsStr) -> bool {
    name.as_encoded_bytes().starts_with(b".")
}

fn is_manifest_name(name: &OsStr) -> bool {
    let name = Path::new(name);
    !is_hidden(name.as_os_str())
        && name.extension().and_then(OsStr::to_str).is_some_and(|ext| {
            ["yaml", "yml", "json"]
                .iter()
                .any(|known| ext.eq_ignore_ascii_case(known))
        })
}

enum FileRead {
    /// Removed between the change and the read.
    Gone,
    /// Unreadable or not YAML/JSON at all.
    Unusable(FileError),
    /// The objects of the usable documents, and what is wrong with the others.
    Parsed {
        objects: FileObjects,
        errors: Vec<FileError>,
    },
}

/// Reads and parses files, in parallel when there are many (a start over thousands of files was
/// most of sluice's share of the start), in path order.
fn read_files(paths: BTreeSet<PathBuf>) -> Vec<(PathBuf, FileRead)> {
    let read = |path: PathBuf| {
        let read = read_file(&path);
        (path, read)
    };
    if paths.len() < PARALLEL_READS {
        paths.into_iter().map(read).collect()
    } else {
        paths.into_par_iter().map(read).collect()
    }
}

/// Below this many files a reload reads them on this thread: fanning out costs more than it saves.
const PARALLEL_READS: usize = 64;

fn read_file(path: &Path) -> FileRead {
    let unusable = |message: String| {
        FileRead::Unusable(FileError {
            path: path.to_owned(),
            document: None,
            message: format!("{message}; {FILE_ADVICE}"),
        })
    };
    let file = match fs::File::open(path) {
        Ok(file) => file,
        Err(error) if is_gone(&error) => return FileRead::Gone,
        Err(error) => return unusable(format!("cannot read the file: {error}")),
    };
    match file.metadata() {
        Ok(meta) if meta.len() > MAX_FILE_BYTES => return unusable(too_big()),
        Ok(_) => {}
        Err(error) => return unusable(format!("cannot read the file: {error}")),
    }
    // A file that grows past the limit while it is read is cut there, and the cut detected.
    let mut input = io::BufReader::new(file.take(MAX_FILE_BYTES + 1));
    let is_json = path
        .extension()
        .is_some_and(|ext| ext.eq_ignore_ascii_case("json"));
    let documents = if is_json {
        read_json(&mut input)
    } else {
        read_yaml(&mut input)
    };
    if input.get_ref().limit() == 0 {
        return unusable(too_big());
    }
    let documents = match documents {
        Ok(documents) => documents,
        Err(message) => return unusable(message),
    };
    let mut reader = DocumentReader {
        path,
        objects: BTreeMap::new(),
        errors: Vec::new(),
    };
    for (index, document) in documents.into_iter().enumerate() {
        reader.document(index + 1, document);
    }
    FileRead::Parsed {
        objects: reader.objects,
        errors: reader.errors,
    }
}

fn too_big() -> String {
    format!(
        "the file is larger than the {} MiB sluice reads from one file; split it into several files",
        MAX_FILE_BYTES >> 20
    )
}

type Input = io::BufReader<io::Take<fs::File>>;

fn read_json(input: &mut Input) -> Result<Vec<Document>, String> {
    let mut json = serde_json::Deserializer::from_reader(input);
    let read = Trimmed::deserialize(&mut json).and_then(|Trimmed(value)| {
        json.end()?;
        Ok(value)
    });
    match read {
        Ok(value) => Ok(vec![Document { line: None, value }]),
        Err(error) if error.to_string().starts_with("recursion limit exceeded") => Err(format!(
            "not valid JSON: {error} (objects nest at most {MAX_DEPTH} levels deep)"
        )),
        Err(error) => Err(format!("not valid JSON: {error}")),
    }
}

/// Reads the documents one at a time, each within the parser's budget: any number of documents
/// of any realistic size, while an alias bomb or a pathological nesting is refused.
fn read_yaml(input: &mut Input) -> Result<Vec<Document>, String> {
    serde_saphyr::read_with_options::<_, serde_saphyr::Spanned<Trimmed>>(input, yaml_options())
        .map(|document| match document {
            Ok(spanned) => Ok(Document {
                line: Some(spanned.referenced.line()).filter(|&line| line > 0),
                value: spanned.value.0,
            }),
            Err(error) => Err(format!(
                "not valid YAML: {}{}",
                error.without_snippet(),
                yaml_limit(&error)
            )),
        })
        .collect()
}

/// Which of sluice's limits a YAML error is about, if any, said so that it can be acted on.
fn yaml_limit(mut error: &serde_saphyr::Error) -> String {
    use serde_saphyr::budget::BudgetBreach;
    while let serde_saphyr::Error::AliasError { error: inner, .. }
    | serde_saphyr::Error::WithSnippet { error: inner, .. } = error
    {
        error = inner;
    }
    match error {
        serde_saphyr::Error::Budget {
            breach: BudgetBreach::Depth { .. },
            ..
        } => format!(" (values nest at most {MAX_DEPTH} levels deep)"),
        serde_saphyr::Error::AliasReplayLimitExceeded { .. }
        | serde_saphyr::Error::AliasExpansionLimitExceeded { .. }
        | serde_saphyr::Error::AliasReplayStackDepthExceeded { .. } => format!(
            " (aliases may expand one document by at most {MAX_ALIAS_EVENTS} events; write the values out)"
        ),
        serde_saphyr::Error::Budget { .. } => " (a limit of sluice's YAML reader)".into(),
        _ if error.to_string().starts_with("recursion limit exceeded") => {
            format!(" (values nest at most {MAX_DEPTH} levels deep)")
        }
        _ => String::new(),
    }
}

/// The YAML parser's budget, per document. Without aliases a document's events and nodes are
/// bounded by its bytes, which [`MAX_FILE_BYTES`] bounds: the budget that matters is how much
/// aliases may expand (a Kubernetes object has no use for more than a few thousand events
/// through aliases; an alias bomb asks for billions) and how deep values nest.
fn yaml_options() -> serde_saphyr::Options {
    let mut alias_limits = serde_saphyr::options::AliasLimits::default();
    alias_limits.max_total_replayed_events = MAX_ALIAS_EVENTS;
    serde_saphyr::options! {
        budget: serde_saphyr::budget! {
            max_reader_input_bytes: Some(MAX_FILE_BYTES as usize + 1),
            max_events: usize::MAX,
            max_nodes: usize::MAX,
            max_total_scalar_bytes: MAX_FILE_BYTES as usize,
            max_depth: MAX_DEPTH,
        },
        alias_limits: alias_limits,
    }
}

struct Document {
    /// Where it starts, for messages: documents that are empty are not counted, so the number
    /// alone can mislead.
    line: Option<u64>,
    value: Value,
}

/// A document as read: the items of a `List` of kinds sluice does not use are cut down to their
/// `apiVersion` and `kind` while they are read, so that a dump of a whole cluster holds only the
/// objects sluice uses.
struct Trimmed(Value);

impl<'de> Deserialize<'de> for Trimmed {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TrimVisitor { items: false })
            .map(Trimmed)
    }
}

/// A document's `items`.
struct ListItems(Value);

impl<'de> Deserialize<'de> for ListItems {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer
            .deserialize_any(TrimVisitor { items: true })
            .map(ListItems)
    }
}

/// Builds a [`Value`] like `Value`'s own visitor, except for a document's `items` sequence.
struct TrimVisitor {
    items: bool,
}

impl<'de> de::Visitor<'de> for TrimVisitor {
    type Value = Value;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a YAML or JSON value")
    }

    fn visit_bool<E>(self, value: bool) -> Result<Value, E> {
        Ok(Value::Bool(value))
    }

    fn visit_i64<E>(self, value: i64) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_u64<E>(self, value: u64) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_f64<E>(self, value: f64) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_str<E>(self, value: &str) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_string<E>(self, value: String) -> Result<Value, E> {
        Ok(value.into())
    }

    fn visit_unit<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_none<E>(self) -> Result<Value, E> {
        Ok(Value::Null)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Value, D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Value, A::Error> {
        if !self.items {
            return Value::deserialize(de::value::SeqAccessDeserializer::new(seq));
        }
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(1024));
        while let Some(item) = seq.next_element::<Value>()? {
            items.push(trim_unused(item));
        }
        Ok(Value::Array(items))
    }

    fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Value, A::Error> {
        if self.items {
            return Value::deserialize(de::value::MapAccessDeserializer::new(map));
        }
        let mut fields = serde_json::Map::new();
        while let Some(key) = map.next_key::<String>()? {
            let value = if key == "items" {
                map.next_value::<ListItems>()?.0
            } else {
                map.next_value()?
            };
            fields.insert(key, value);
        }
        Ok(Value::Object(fields))
    }
}

/// An object of a kind sluice does not use, reduced to what says so.
fn trim_unused(item: Value) -> Value {
    match header(&item) {
        Ok((api_version, kind)) if kind_of(api_version, kind).is_none() => {
            serde_json::json!({"apiVersion": api_version, "kind": kind})
        }
        _ => item,
    }
}

/// Where an object sits in a file, for messages.
#[derive(Clone, Copy)]
struct Place {
    document: usize,
    line: Option<u64>,
    item: Option<usize>,
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, self.item) {
            (Some(line), Some(item)) => write!(f, " at line {line}, items[{item}]"),
            (Some(line), None) => write!(f, " at line {line}"),
            (None, Some(item)) => write!(f, " in items[{item}]"),
            (None, None) => Ok(()),
        }
    }
}

/// The kinds sluice uses.
enum Kind {
    Ingress(IngressKind),
    Service,
    Endpoints,
    EndpointSlice,
    Secret,
    ConfigMap,
    Route,
    Configuration,
    List,
}

fn kind_of(api_version: &str, kind: &str) -> Option<Kind> {
    let knative = api_version.split_once('/') == Some((knative::API_GROUP, knative::API_VERSION));
    let serving = matches!(
        api_version.split_once('/'),
        Some((knative::SERVING_GROUP, "v1" | "v1beta1" | "v1alpha1"))
    );
    match (api_version, kind) {
        (_, "Ingress") if knative => Some(Kind::Ingress(IngressKind::Ingress)),
        (_, "ClusterIngress") if knative => Some(Kind::Ingress(IngressKind::ClusterIngress)),
        (_, "Route") if serving => Some(Kind::Route),
        (_, "Configuration") if serving => Some(Kind::Configuration),
        ("v1", "ConfigMap") => Some(Kind::ConfigMap),
        ("v1", "Service") => Some(Kind::Service),
        ("v1", "Endpoints") => Some(Kind::Endpoints),
        ("v1", "Secret") => Some(Kind::Secret),
        ("v1", "List") => Some(Kind::List),
        ("discovery.k8s.io/v1", "EndpointSlice") => Some(Kind::EndpointSlice),
        _ => None,
    }
}

struct DocumentReader<'a> {
    path: &'a Path,
    objects: FileObjects,
    errors: Vec<FileError>,
}

impl DocumentReader<'_> {
    fn document(&mut self, number: usize, document: Document) {
        let place = Place {
            document: number,
            line: document.line,
            item: None,
        };
        let (api_version, kind) = match header(&document.value) {
            Ok(header) => header,
            Err(problem) => return self.error(place, &document.value, &problem),
        };
        if !matches!(kind_of(api_version, kind), Some(Kind::List)) {
            return self.object(place, &document.value);
        }
        let Some(Value::Array(items)) = document.value.get("items") else {
            return self.error(place, &document.value, "a List needs an items sequence");
        };
        for (item, value) in items.iter().enumerate() {
            let place = Place {
                item: Some(item),
                ..place
            };
            self.object(place, value);
        }
    }

    fn object(&mut self, place: Place, value: &Value) {
        let (api_version, kind) = match header(value) {
            Ok(header) => header,
            Err(problem) => return self.error(place, value, &problem),
        };
        let Some(known) = kind_of(api_version, kind) else {
            tracing::debug!(
                file = %self.path.display(),
                document = place.document,
                kind = %format_args!("{api_version}/{kind}"),
                "ignoring a kind sluice does not use"
            );
            return;
        };
        match decode(known, value, self.path) {
            Ok(object) => match self.objects.entry(object.key()) {
                btree_map::Entry::Vacant(slot) => {
                    slot.insert(object);
                }
                btree_map::Entry::Occupied(slot) => tracing::warn!(
                    "{}{}: {} is defined again in this file; the first definition is used",
                    self.path.display(),
                    document_label(&Some(place.document)),
                    slot.key(),
                ),
            },
            Err(problem) => self.error(place, value, &problem),
        }
    }

    fn error(&mut self, place: Place, value: &Value, problem: &str) {
        let kind = value.get("kind").and_then(Value::as_str);
        let name = value
            .get("metadata")
            .and_then(|meta| meta.get("name"))
            .and_then(Value::as_str);
        let subject = match (kind, name) {
            (Some(kind), Some(name)) => format!("{kind} {name:?}"),
            (Some(kind), None) => kind.to_owned(),
            (None, _) => "the document".to_owned(),
        };
        self.errors.push(FileError {
            path: self.path.to_owned(),
            document: Some(place.document),
            message: format!("{subject}{place}: {problem}; {DOCUMENT_ADVICE}"),
        });
    }
}

fn header(value: &Value) -> Result<(&str, &str), String> {
    let Value::Object(fields) = value else {
        return Err(format!(
            "expected a Kubernetes object (a mapping with apiVersion and kind), found {}",
            json_type(value)
        ));
    };
    let field = |name: &str| match fields.get(name) {
        Some(Value::String(text)) if !text.is_empty() => Ok(text.as_str()),
        Some(Value::String(_)) | None => Err(format!(
            "{name} is missing; every manifest needs apiVersion and kind"
        )),
        Some(other) => Err(format!(
            "{name} must be a string, found {}",
            json_type(other)
        )),
    };
    Ok((field("apiVersion")?, field("kind")?))
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a sequence",
        Value::Object(_) => "a mapping",
    }
}

fn decode(kind: Kind, value: &Value, path: &Path) -> Result<Object, String> {
    Ok(match kind {
        Kind::Ingress(ingress_kind) => {
            let mut ingress: knative::Ingress = typed(value)?;
            require_name(&ingress.metadata.name)?;
            let namespace = &mut ingress.metadata.namespace;
            match ingress_kind {
                IngressKind::Ingress if namespace.is_empty() => {
                    *namespace = DEFAULT_NAMESPACE.into();
                }
                IngressKind::Ingress => {}
                // Cluster-scoped: the API server drops a namespace, and the key must not carry one.
                IngressKind::ClusterIngress => namespace.clear(),
            }
            Object::Ingress(ingress_kind, Box::new(ingress))
        }
        Kind::Service => Object::Service(namespaced(value)?),
        Kind::Endpoints => Object::Endpoints(namespaced(value)?),
        Kind::EndpointSlice => Object::EndpointSlice(namespaced(value)?),
        Kind::Secret => {
            let mut secret: Box<Secret> = namespaced(value)?;
            // The API server folds the write-only stringData into data, the field readers use.
            if let Some(strings) = secret.string_data.take() {
                let data = secret.data.get_or_insert_default();
                for (key, text) in strings {
                    data.insert(key, ByteString(text.into_bytes()));
                }
            }
            Object::Secret(secret)
        }
        Kind::ConfigMap => Object::ConfigMap(namespaced(value)?),
        Kind::Route => {
            let mut route: knative::Route = typed(value)?;
            require_name(&route.metadata.name)?;
            if route.metadata.namespace.is_empty() {
                route.metadata.namespace = DEFAULT_NAMESPACE.into();
            }
            route.origin = Some(path.display().to_string());
            Object::Route(Box::new(route))
        }
        Kind::Configuration => {
            let mut configuration: knative::Configuration = typed(value)?;
            require_name(&configuration.metadata.name)?;
            if configuration.metadata.namespace.is_empty() {
                configuration.metadata.namespace = DEFAULT_NAMESPACE.into();
            }
            Object::Configuration(Box::new(configuration))
        }
        Kind::List => return Err("a List cannot be an item of a List".into()),
    })
}

fn typed<T: DeserializeOwned>(value: &Value) -> Result<T, String> {
    serde_path_to_error::deserialize(value).map_err(|error| error.to_string())
}

fn namespaced<T>(value: &Value) -> Result<Box<T>, String>
where
    T: DeserializeOwned + k8s_openapi::Metadata<Ty = ObjectMeta>,
{
    let mut object: T = typed(value)?;
    let meta = object.metadata_mut();
    require_name(meta.name.as_deref().unwrap_or_default())?;
    if meta.namespace.as_deref().is_none_or(str::is_empty) {
        meta.namespace = Some(DEFAULT_NAMESPACE.into());
    }
    Ok(Box::new(object))
}

fn require_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        Err("metadata.name is missing; every object needs a name".into())
    } else {
        Ok(())
    }
}

/// Whether the world would see no difference between two versions.
fn same(a: &Object, b: &Object) -> bool {
    match (a, b) {
        (Object::Ingress(kind_a, a), Object::Ingress(kind_b, b)) => kind_a == kind_b && a == b,
        (Object::Service(a), Object::Service(b)) => a == b,
        (Object::Endpoints(a), Object::Endpoints(b)) => a == b,
        (Object::EndpointSlice(a), Object::EndpointSlice(b)) => a == b,
        (Object::Secret(a), Object::Secret(b)) => a == b,
        (Object::ConfigMap(a), Object::ConfigMap(b)) => a == b,
        (Object::Route(a), Object::Route(b)) => a == b,
        (Object::Configuration(a), Object::Configuration(b)) => a == b,
        _ => false,
    }
}

/// Loads `dir` and follows it: the first batch is the full load (sent even when empty, so the
/// consumer knows the world is complete), then one batch per burst of changes that changed
/// something or found a problem. Must be called within a Tokio runtime. The watch ends when the
/// receiver is dropped.
pub fn watch(dir: PathBuf) -> Result<Batches, FileSourceError> {
    let source = DirectorySource::new(dir)?;
    let dir = source.dir.clone();
    let (changes_tx, changes) = mpsc::unbounded_channel();
    let watch_error = |source| FileSourceError::Watch {
        dir: dir.clone(),
        source,
    };
    let mut watcher = notify::recommended_watcher(move |event| {
        // Fails only once the task is gone, and then nobody is listening.
        let _ = changes_tx.send(event);
    })
    .map_err(watch_error)?;
    // Watching before the first load means no change can fall between the two.
    watcher
        .watch(&dir, notify::RecursiveMode::Recursive)
        .map_err(watch_error)?;
    let (batches, receiver) = mpsc::channel(BATCH_QUEUE);
    tokio::spawn(follow(watcher, source, changes, batches));
    Ok(receiver)
}

type Changes = mpsc::UnboundedReceiver<notify::Result<notify::Event>>;

async fn follow(
    watcher: notify::RecommendedWatcher,
    source: DirectorySource,
    mut changes: Changes,
    batches: mpsc::Sender<Batch>,
) {
    // Dropping the watcher ends the watch, so it lives exactly as long as this task.
    let _watcher = watcher;
    let dir = source.dir.clone();
    // Some platforms report events under the directory's canonical path.
    let canonical = fs::canonicalize(&dir).unwrap_or_else(|_| dir.clone());
    let Some((mut source, batch)) = off_thread(source, DirectorySource::load_all).await else {
        return;
    };
    if batches.send(batch.into()).await.is_err() {
        return;
    }
    loop {
        let paths = tokio::select! {
            paths = next_burst(&mut changes, &dir, &canonical) => paths,
            () = batches.closed() => return,
        };
        let Some(paths) = paths else {
            tracing::warn!(dir = %dir.display(), "the file watcher stopped; manifest changes are no longer followed");
            return;
        };
        let reloaded = off_thread(source, move |source| source.reload(&paths)).await;
        let Some((next, batch)) = reloaded else {
            return;
        };
        source = next;
        if !batch.is_empty() && batches.send(batch.into()).await.is_err() {
            return;
        }
    }
}

/// File I/O blocks, so it runs on a thread of its own, with a stack deep enough for the
/// parsers' recursion at [`MAX_DEPTH`]; the source goes there and comes back.
async fn off_thread(
    mut source: DirectorySource,
    load: impl FnOnce(&mut DirectorySource) -> Load + Send + 'static,
) -> Option<(DirectorySource, Load)> {
    let dir = source.dir.clone();
    let (done, result) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("sluice-files".into())
        .stack_size(PARSE_STACK_BYTES)
        .spawn(move || {
            let batch = load(&mut source);
            // Fails only when sluice is stopping and nobody waits.
            let _ = done.send((source, batch));
        });
    let outcome = match spawned {
        Ok(_) => result
            .await
            .map_err(|_| "the loading thread panicked".to_owned()),
        Err(error) => Err(format!("cannot start a thread to read them: {error}")),
    };
    match outcome {
        Ok(done) => Some(done),
        Err(error) => {
            tracing::error!(dir = %dir.display(), "loading manifests failed ({error}); manifest changes are no longer followed");
            None
        }
    }
}

/// Collects the paths of one burst of changes: until the events pause for [`QUIET_PERIOD`], or
/// [`MAX_DELAY`] after the first. `None` once the watcher is gone.
async fn next_burst(changes: &mut Changes, dir: &Path, canonical: &Path) -> Option<Vec<PathBuf>> {
    let mut paths = BTreeSet::new();
    note(changes.recv().await?, dir, canonical, &mut paths);
    let deadline = tokio::time::Instant::now() + MAX_DELAY;
    loop {
        let wait =
            QUIET_PERIOD.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, changes.recv()).await {
            Ok(Some(event)) => note(event, dir, canonical, &mut paths),
            // The watcher is gone, but this burst is still worth loading.
            Ok(None) | Err(_) => return Some(paths.into_iter().collect()),
        }
    }
}

fn note(
    event: notify::Result<notify::Event>,
    dir: &Path,
    canonical: &Path,
    paths: &mut BTreeSet<PathBuf>,
) {
    let event = match event {
        Ok(event) => event,
        Err(error) => {
            tracing::warn!(dir = %dir.display(), "file watcher error ({error}); rescanning the directory");
            paths.insert(dir.to_owned());
            return;
        }
    };
    // Opening a file, our own reads included, changes nothing.
    if let EventKind::Access(access) = event.kind
        && access != AccessKind::Close(AccessMode::Write)
    {
        return;
    }
    if event.need_rescan() {
        paths.insert(dir.to_owned());
        return;
    }
    for path in event.paths {
        let path = match path.strip_prefix(canonical) {
            Ok(rest) if !path.starts_with(dir) => dir.join(rest),
            _ => path,
        };
        // Kubernetes updates a ConfigMap or Secret volume by swapping the `..data` symlink the
        // visible files point through: every file may have changed, and none reports it.
        let swapped = path.parent() == Some(dir) && path.file_name() == Some(OsStr::new("..data"));
        paths.insert(if swapped { dir.to_owned() } else { path });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SERVICE: &str = "apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  ports: [{port: 80}]
";

    const INGRESS: &str = "apiVersion: networking.internal.knative.dev/v1alpha1
kind: Ingress
metadata: {name: hello}
spec:
  rules:
  - hosts: [hello.example.com]
    http:
      paths:
      - splits: [{serviceName: hello, servicePort: 80}]
";

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        fs::create_dir_all(path.parent().expect("test path has a parent")).expect("mkdir");
        fs::write(&path, text).expect("write test file");
        path
    }

    fn upserted(batch: &Load) -> Vec<String> {
        upserts(&batch.events)
    }

    fn upserts(events: &[SourceEvent]) -> Vec<String> {
        events
            .iter()
            .filter_map(|event| match event {
                SourceEvent::Upsert(object) => Some(object.key().to_string()),
                SourceEvent::Delete(_) => None,
            })
            .collect()
    }

    fn deleted(batch: &Load) -> Vec<String> {
        batch
            .events
            .iter()
            .filter_map(|event| match event {
                SourceEvent::Delete(key) => Some(key.to_string()),
                SourceEvent::Upsert(_) => None,
            })
            .collect()
    }

    fn service_port(batch: &Load) -> i32 {
        let ports = batch.events.iter().find_map(|event| match event {
            SourceEvent::Upsert(Object::Service(service)) => service.spec.as_ref()?.ports.clone(),
            _ => None,
        });
        ports.expect("a service upsert")[0].port
    }

    fn service_with_port(port: u16) -> String {
        SERVICE.replace("port: 80", &format!("port: {port}"))
    }

    #[test]
    fn loads_every_document_of_a_multi_document_file() {
        let dir = tempfile::tempdir().unwrap();
        let endpoints = "apiVersion: v1\nkind: Endpoints\nmetadata: {name: web, namespace: apps}\n";
        write(
            dir.path(),
            "all.yaml",
            &format!("---\n{SERVICE}---\n# nothing here\n---\n{endpoints}---\n{INGRESS}"),
        );
        let mut source = DirectorySource::new(dir.path()).unwrap();
        let batch = source.load_all();
        assert!(batch.initial);
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        assert_eq!(
            upserted(&batch),
            [
                "Ingress/default/hello",
                "Service/default/web",
                "Endpoints/apps/web"
            ]
        );
        let again = source.load_all();
        assert!(!again.initial);
        assert!(again.is_empty(), "nothing changed: {again:?}");
    }

    #[test]
    fn other_kinds_hidden_files_and_editor_leftovers_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let deployment = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: web}\n";
        let k8s_ingress =
            "apiVersion: networking.k8s.io/v1\nkind: Ingress\nmetadata: {name: web}\n";
        write(
            dir.path(),
            "other.yaml",
            &format!("{deployment}---\n{k8s_ingress}"),
        );
        write(dir.path(), ".hidden.yaml", SERVICE);
        write(dir.path(), ".git/config.yaml", SERVICE);
        write(dir.path(), "web.yaml~", SERVICE);
        write(dir.path(), ".web.yaml.swp", SERVICE);
        write(dir.path(), "notes.txt", SERVICE);
        write(dir.path(), "nested/deeper/web.yml", SERVICE);
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        assert_eq!(upserted(&batch), ["Service/default/web"]);
    }

    #[test]
    fn objects_without_a_namespace_are_in_default() {
        let dir = tempfile::tempdir().unwrap();
        let cluster = INGRESS
            .replace("kind: Ingress", "kind: ClusterIngress")
            .replace("{name: hello}", "{name: hello, namespace: ignored}");
        let secret = r#"{"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "tls"},
            "stringData": {"tls.crt": "CERT"}}"#;
        write(dir.path(), "a.yaml", &format!("{INGRESS}---\n{cluster}"));
        write(dir.path(), "b.json", secret);
        let list = format!(
            "apiVersion: v1\nkind: List\nitems:\n- {}",
            serde_json::to_string(&serde_saphyr::from_str::<Value>(SERVICE).unwrap()).unwrap()
        );
        write(dir.path(), "c.yaml", &list);
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        assert_eq!(
            upserted(&batch),
            [
                "Ingress/default/hello",
                "ClusterIngress/hello",
                "Service/default/web",
                "Secret/default/tls"
            ]
        );
        for event in &batch.events {
            match event {
                SourceEvent::Upsert(Object::Ingress(IngressKind::Ingress, ingress)) => {
                    assert_eq!(ingress.metadata.namespace, "default");
                }
                SourceEvent::Upsert(Object::Ingress(IngressKind::ClusterIngress, ingress)) => {
                    assert_eq!(ingress.metadata.namespace, "");
                }
                SourceEvent::Upsert(Object::Service(service)) => {
                    assert_eq!(service.metadata.namespace.as_deref(), Some("default"));
                }
                SourceEvent::Upsert(Object::Secret(secret)) => {
                    assert_eq!(secret.metadata.namespace.as_deref(), Some("default"));
                    let data = secret.data.as_ref().expect("stringData folded into data");
                    assert_eq!(data["tls.crt"].0, b"CERT");
                }
                other => panic!("unexpected {other:?}"),
            }
        }
    }

    #[test]
    fn a_broken_file_keeps_its_objects_and_reports_where() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "web.yaml", &format!("{SERVICE}---\n{INGRESS}"));
        let mut source = DirectorySource::new(dir.path()).unwrap();
        assert_eq!(source.load_all().events.len(), 2);

        fs::write(&path, "apiVersion: v1\nkind: [Service\n").unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        assert!(
            batch.events.is_empty(),
            "nothing is deleted: {:?}",
            batch.events
        );
        assert_eq!(batch.errors.len(), 1);
        let error = &batch.errors[0];
        assert_eq!(
            (error.path.as_path(), error.document),
            (path.as_path(), None)
        );
        let shown = error.to_string();
        assert!(
            shown.starts_with(&format!("{}: not valid YAML", path.display())),
            "{shown}"
        );
        let kept: Vec<String> = batch.kept.iter().map(|k| k.key.to_string()).collect();
        assert_eq!(kept, ["Ingress/default/hello", "Service/default/web"]);
        assert_eq!(batch.kept[0].problem, shown);
        assert!(batch.healthy.is_empty());

        // One bad document: the good one is applied, the bad one's object keeps its last version.
        let bad_ingress = INGRESS.replace("servicePort: 80", "servicePort: [80]");
        fs::write(
            &path,
            format!("{}---\n{bad_ingress}", service_with_port(81)),
        )
        .unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        assert_eq!(upserted(&batch), ["Service/default/web"]);
        assert_eq!(service_port(&batch), 81);
        assert!(deleted(&batch).is_empty());
        assert_eq!(batch.errors.len(), 1);
        let shown = batch.errors[0].to_string();
        assert_eq!(batch.errors[0].document, Some(2));
        assert!(
            shown.contains("(document 2): Ingress \"hello\" at line 7: spec.rules[0].http.paths[0].splits[0].servicePort"),
            "{shown}"
        );
        let kept: Vec<String> = batch.kept.iter().map(|k| k.key.to_string()).collect();
        assert_eq!(
            kept,
            ["Ingress/default/hello"],
            "only the bad document's object is held back"
        );

        // Clean again: what the file no longer holds goes.
        fs::write(&path, SERVICE).unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        assert!(batch.errors.is_empty());
        assert_eq!(batch.healthy, [path.display().to_string()]);
        assert_eq!(upserted(&batch), ["Service/default/web"]);
        assert_eq!(deleted(&batch), ["Ingress/default/hello"]);
    }

    #[test]
    fn removing_a_file_or_directory_deletes_its_objects() {
        let dir = tempfile::tempdir().unwrap();
        let web = write(dir.path(), "web.yaml", SERVICE);
        write(dir.path(), "sub/hello.yaml", INGRESS);
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();

        fs::remove_file(&web).unwrap();
        let batch = source.reload(&[web]);
        assert_eq!(deleted(&batch), ["Service/default/web"]);
        assert!(upserted(&batch).is_empty());

        let sub = dir.path().join("sub");
        fs::remove_dir_all(&sub).unwrap();
        assert_eq!(deleted(&source.reload(&[sub])), ["Ingress/default/hello"]);
    }

    #[test]
    fn losing_the_whole_directory_keeps_everything() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "web.yaml", SERVICE);
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();
        fs::remove_dir_all(dir.path()).unwrap();
        let batch = source.load_all();
        assert!(batch.events.is_empty(), "{:?}", batch.events);
        assert_eq!(batch.errors.len(), 1);
        assert_eq!(batch.errors[0].path, dir.path());
    }

    #[test]
    fn events_become_paths_to_reload() {
        use notify::event::{CreateKind, ModifyKind, RenameMode};
        let dir = Path::new("/manifests");
        let mut paths = BTreeSet::new();
        let event = |kind, path: &str| Ok(notify::Event::new(kind).add_path(dir.join(path)));
        note(
            event(
                EventKind::Access(AccessKind::Open(AccessMode::Any)),
                "a.yaml",
            ),
            dir,
            dir,
            &mut paths,
        );
        assert!(paths.is_empty(), "our own reads are not changes");
        note(
            event(
                EventKind::Modify(ModifyKind::Name(RenameMode::To)),
                "b.yaml",
            ),
            dir,
            dir,
            &mut paths,
        );
        assert_eq!(paths, BTreeSet::from([dir.join("b.yaml")]));
        note(
            event(EventKind::Create(CreateKind::Any), "..data"),
            dir,
            dir,
            &mut paths,
        );
        assert!(
            paths.contains(dir),
            "a Kubernetes volume update rescans everything"
        );
    }

    #[test]
    fn a_change_deletes_what_the_file_no_longer_holds() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "web.yaml", &format!("{SERVICE}---\n{INGRESS}"));
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();
        fs::write(&path, INGRESS).unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        assert_eq!(deleted(&batch), ["Service/default/web"]);
        assert!(upserted(&batch).is_empty(), "the ingress did not change");
    }

    #[test]
    fn reload_reads_only_the_changed_paths() {
        let dir = tempfile::tempdir().unwrap();
        let web = write(dir.path(), "web.yaml", SERVICE);
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();
        write(dir.path(), "broken.yaml", "{");
        fs::write(&web, service_with_port(82)).unwrap();
        let batch = source.reload(&[web]);
        assert!(batch.errors.is_empty(), "broken.yaml was not read");
        assert_eq!(service_port(&batch), 82);
    }

    #[test]
    fn the_first_path_wins_a_duplicate() {
        let dir = tempfile::tempdir().unwrap();
        let a = write(dir.path(), "a.yaml", &service_with_port(1));
        let b = write(dir.path(), "b.yaml", &service_with_port(2));
        let mut source = DirectorySource::new(dir.path()).unwrap();
        let batch = source.load_all();
        assert_eq!(upserted(&batch), ["Service/default/web"]);
        assert_eq!(service_port(&batch), 1);

        fs::write(&b, service_with_port(3)).unwrap();
        assert!(
            source.reload(std::slice::from_ref(&b)).is_empty(),
            "b.yaml is shadowed"
        );

        fs::remove_file(&a).unwrap();
        let batch = source.reload(&[a]);
        assert!(deleted(&batch).is_empty());
        assert_eq!(service_port(&batch), 3);

        fs::remove_file(&b).unwrap();
        assert_eq!(deleted(&source.reload(&[b])), ["Service/default/web"]);
    }

    #[test]
    fn a_missing_directory_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope");
        let error = DirectorySource::new(&missing).unwrap_err();
        assert!(matches!(error, FileSourceError::Missing { .. }));
        assert!(error.to_string().contains(&missing.display().to_string()));
        let file = write(dir.path(), "web.yaml", SERVICE);
        assert!(matches!(
            DirectorySource::new(file),
            Err(FileSourceError::NotADirectory { .. })
        ));
    }

    fn only_error(batch: &Load) -> String {
        assert_eq!(batch.errors.len(), 1, "{:?}", batch.errors);
        batch.errors[0].to_string()
    }

    #[test]
    fn ten_thousand_documents_in_one_file_load() {
        let dir = tempfile::tempdir().unwrap();
        let documents: Vec<String> = (0..10_000)
            .map(|n| SERVICE.replace("name: web", &format!("name: web-{n}")))
            .collect();
        write(dir.path(), "all.yaml", &documents.join("---\n"));
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        assert!(batch.errors.is_empty(), "{:?}", batch.errors);
        assert_eq!(batch.events.len(), 10_000);
    }

    #[test]
    fn a_list_dump_keeps_the_used_items_and_counts_every_item() {
        let dir = tempfile::tempdir().unwrap();
        let service = serde_saphyr::from_str::<Value>(SERVICE).unwrap();
        let pod = serde_json::json!({"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p"}, "spec": {"containers": [{"name": "c"}]}});
        let bad = serde_json::json!({"apiVersion": "v1", "kind": "Service",
            "metadata": {"name": "bad"}, "spec": {"ports": "eighty"}});
        // kubectl writes the keys in this order: items before kind.
        let dump = serde_json::json!({"apiVersion": "v1", "items": [pod, service, pod, bad],
            "kind": "List", "metadata": {"resourceVersion": ""}});
        write(
            dir.path(),
            "dump.yaml",
            &serde_saphyr::to_string(&dump).unwrap(),
        );
        write(
            dir.path(),
            "dump.json",
            &dump.to_string().replace("\"web\"", "\"web2\""),
        );
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        assert_eq!(
            upserted(&batch),
            ["Service/default/web", "Service/default/web2"]
        );
        assert_eq!(batch.errors.len(), 2, "{:?}", batch.errors);
        for error in &batch.errors {
            assert!(
                error.to_string().contains("Service \"bad\"")
                    && error.to_string().contains("items[3]: spec.ports"),
                "{error}"
            );
        }
    }

    #[test]
    fn an_alias_bomb_is_refused_and_keeps_what_the_file_held() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "web.yaml", SERVICE);
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();
        let mut bomb = String::from("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: lol}\n");
        bomb.push_str("a: &a [lol, lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for (level, previous) in ('b'..='j').zip('a'..) {
            let aliases = vec![format!("*{previous}"); 10].join(", ");
            bomb.push_str(&format!("{level}: &{level} [{aliases}]\n"));
        }
        fs::write(&path, bomb).unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        let shown = only_error(&batch);
        assert!(
            shown.contains("not valid YAML") && shown.contains("aliases may expand"),
            "{shown}"
        );
        assert!(batch.events.is_empty(), "{:?}", batch.events);
        assert_eq!(batch.kept.len(), 1);
    }

    /// Runs `test` on a thread with the stack the file source reads on.
    fn with_parse_stack(test: impl FnOnce() + Send + 'static) {
        std::thread::Builder::new()
            .stack_size(PARSE_STACK_BYTES)
            .spawn(test)
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn deep_nesting_is_refused() {
        with_parse_stack(deep_nesting_is_refused_on_a_parse_stack);
    }

    fn deep_nesting_is_refused_on_a_parse_stack() {
        let dir = tempfile::tempdir().unwrap();
        let depth = 100_000;
        write(
            dir.path(),
            "deep.json",
            &format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        );
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        let shown = only_error(&batch);
        assert!(
            shown.contains("not valid JSON") && shown.contains("nest at most"),
            "{shown}"
        );
        fs::remove_file(dir.path().join("deep.json")).unwrap();
        write(
            dir.path(),
            "deep.yaml",
            &format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
        );
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        let shown = only_error(&batch);
        assert!(
            shown.contains("not valid YAML") && shown.contains("nest at most"),
            "{shown}"
        );
        let block: String = (0..1_000)
            .map(|n| format!("{}a:\n", " ".repeat(n)))
            .collect();
        write(dir.path(), "deep.yaml", &block);
        let batch = DirectorySource::new(dir.path()).unwrap().load_all();
        let shown = only_error(&batch);
        assert!(
            shown.contains("not valid YAML") && shown.contains("nest at most"),
            "{shown}"
        );
    }

    #[test]
    fn a_file_over_the_limit_is_refused_unread() {
        let dir = tempfile::tempdir().unwrap();
        let path = write(dir.path(), "big.yaml", SERVICE);
        let mut source = DirectorySource::new(dir.path()).unwrap();
        source.load_all();
        // Sparse: no disk is used, and nothing may read it.
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_len(MAX_FILE_BYTES + 1)
            .unwrap();
        let batch = source.reload(std::slice::from_ref(&path));
        let shown = only_error(&batch);
        assert!(shown.contains("split it into several files"), "{shown}");
        assert_eq!(batch.kept.len(), 1, "what it held is kept");
    }

    #[tokio::test]
    async fn watch_sends_the_load_then_a_batch_per_change() {
        let dir = tempfile::tempdir().unwrap();
        let mut batches = watch(dir.path().to_owned()).unwrap();
        let within = Duration::from_secs(5);
        let first = tokio::time::timeout(within, batches.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(first.initial && first.events.is_empty() && first.problems == 0);

        // Editors save by writing a temporary file and renaming it over the real one.
        let temporary = write(dir.path(), ".web.yaml.tmp", SERVICE);
        fs::rename(&temporary, dir.path().join("web.yaml")).unwrap();
        let batch = tokio::time::timeout(within, batches.recv())
            .await
            .unwrap()
            .unwrap();
        assert!(!batch.initial);
        assert_eq!(upserts(&batch.events), ["Service/default/web"]);
    }
}
