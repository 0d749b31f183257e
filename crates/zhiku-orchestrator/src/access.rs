//! Who may see what, for every transport: the caller (the principal the runtime's key layer
//! left in the request) is kept to its knowledge bases, its searches to the documents its
//! groups may read (the retriever applies that inside the vector search), and every Ask,
//! Ingest, Evaluate and Delete leaves one line on the log target `zhiku::audit`.
//!
//! No principal means a server without keys: everything is allowed, as before keys.

use std::collections::BTreeSet;

use zhiku_proto::v1::{AskEvent, EvaluateEvent, Filter, IngestEvent, IngestStage};
use zhiku_runtime::auth::{KnownGroups, Principal, confine_scope};

use crate::error::OrchestratorError;

/// PERMISSION_DENIED unless `caller` may use knowledge base `kb`.
pub fn require_kb(caller: Option<&Principal>, kb: &str) -> Result<(), OrchestratorError> {
    match caller {
        Some(p) if !p.may_use(kb) => Err(OrchestratorError::PermissionDenied(format!(
            "the API key of `{}` may not use knowledge base `{kb}`",
            p.name
        ))),
        _ => Ok(()),
    }
}

/// Confines a search filter to the documents `caller` may read (an admin's, and any
/// caller's on a server without keys, stays as asked).
pub fn confine_filter(caller: Option<&Principal>, filter: &mut Option<Filter>) {
    if caller.is_some_and(|p| !p.is_admin()) {
        confine_scope(caller, &mut filter.get_or_insert_default().readable_by);
    }
}

/// INVALID_ARGUMENT when `readers` name a group no key of the server holds (`known`: None on
/// a server without keys, where any group goes).
pub fn check_readers<'a>(
    known: Option<&KnownGroups>,
    readers: impl IntoIterator<Item = &'a Vec<String>>,
) -> Result<(), OrchestratorError> {
    let Some(known) = known else { return Ok(()) };
    for list in readers {
        // Too many or malformed names first: that is the clearer error.
        zhiku_runtime::auth::normalize_readers(list.clone(), "`readers`")
            .map_err(OrchestratorError::Validation)?;
        known.check(list).map_err(OrchestratorError::Validation)?;
    }
    Ok(())
}

/// Whether `caller` may create knowledge bases (an ingest's `create_if_missing`).
pub fn may_create(caller: Option<&Principal>) -> bool {
    caller.is_none_or(Principal::is_admin)
}

/// Runs a pipeline as [`crate::spawn_pipeline`] does, its events noted in `audit` on their
/// way to the receiver (the line is written when they end or the receiver goes away).
pub(crate) fn spawn_audited<T, F, Fut>(
    work: F,
    mut audit: Audit,
) -> tokio::sync::mpsc::Receiver<Result<T, OrchestratorError>>
where
    T: Audited + Send + 'static,
    F: FnOnce(crate::Events<T>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let mut events = crate::spawn_pipeline(work);
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        while let Some(item) = events.recv().await {
            audit.observe(&item);
            if tx.send(item).await.is_err() {
                break;
            }
        }
    });
    rx
}

/// The caller an HTTP handler got from the key layer.
pub type HttpCaller = Option<axum::Extension<std::sync::Arc<Principal>>>;

/// The principal of an [`HttpCaller`].
pub fn http_principal(caller: &HttpCaller) -> Option<&Principal> {
    caller.as_ref().map(|axum::Extension(p)| p.as_ref())
}

/// One audit line, written when the request's work ends (when this is dropped): the action,
/// the principal, the knowledge base, the documents returned or changed, the request id and
/// whether it failed.
pub struct Audit {
    action: &'static str,
    principal: String,
    knowledge_base: String,
    request_id: String,
    documents: BTreeSet<String>,
    failed: bool,
}

impl Audit {
    /// An audit of `action` on `knowledge_base` by `caller`, in the current request.
    pub fn new(action: &'static str, caller: Option<&Principal>, knowledge_base: &str) -> Self {
        Self {
            action,
            principal: caller.map_or_else(|| "anonymous".to_owned(), |p| p.name.clone()),
            knowledge_base: knowledge_base.to_owned(),
            request_id: zhiku_runtime::request_id::current().unwrap_or_default(),
            documents: BTreeSet::new(),
            failed: false,
        }
    }

    pub fn document(&mut self, id: &str) {
        if !self.documents.contains(id) {
            self.documents.insert(id.to_owned());
        }
    }

    pub fn failed(&mut self) {
        self.failed = true;
    }

    /// Notes what one event of a pipeline returned or changed.
    pub fn observe<T: Audited, E>(&mut self, item: &Result<T, E>) {
        match item {
            Ok(event) => event.audit(self),
            Err(_) => self.failed(),
        }
    }
}

impl Drop for Audit {
    fn drop(&mut self) {
        let documents: Vec<&str> = self.documents.iter().map(String::as_str).collect();
        tracing::info!(
            target: "zhiku::audit",
            action = self.action,
            principal = %self.principal,
            knowledge_base = %self.knowledge_base,
            documents = ?documents,
            request_id = %self.request_id,
            outcome = if self.failed { "failed" } else { "ok" },
            "audit"
        );
    }
}

/// An event whose documents an [`Audit`] records.
pub trait Audited {
    fn audit(&self, audit: &mut Audit);
}

impl Audited for AskEvent {
    fn audit(&self, audit: &mut Audit) {
        use zhiku_proto::v1::ask_event::Event;
        match &self.event {
            Some(Event::Sources(sources)) => {
                for c in &sources.citations {
                    audit.document(&c.document_id);
                }
            }
            Some(Event::Answer(answer)) => {
                for c in &answer.citations {
                    audit.document(&c.document_id);
                }
            }
            _ => {}
        }
    }
}

impl Audited for IngestEvent {
    fn audit(&self, audit: &mut Audit) {
        use zhiku_proto::v1::ingest_event::Event;
        if let Some(Event::File(file)) = &self.event
            && file.stage == IngestStage::Stored as i32
        {
            audit.document(&file.document_id);
        }
    }
}

impl Audited for EvaluateEvent {
    fn audit(&self, audit: &mut Audit) {
        use zhiku_proto::v1::evaluate_event::Event;
        if let Some(Event::CaseResult(result)) = &self.event {
            for c in &result.citations {
                audit.document(&c.document_id);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reader(kbs: Option<&[&str]>) -> Principal {
        Principal {
            name: "ann".into(),
            role: zhiku_runtime::auth::Role::ReadOnly,
            knowledge_bases: kbs.map(|k| k.iter().map(|s| s.to_string()).collect()),
            groups: ["a".to_string()].into_iter().collect(),
        }
    }

    /// A writer into a shared buffer, for reading log lines back.
    #[derive(Clone, Default)]
    struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn one_audit_line_per_call_with_the_documents_it_returned() {
        use zhiku_proto::v1::{Answer, Citation, Sources, ask_event};
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || {
            let ann = reader(None);
            let mut audit = Audit::new("ask", Some(&ann), "hr");
            let cite = |id: &str| Citation {
                document_id: id.into(),
                ..Citation::default()
            };
            let sources = AskEvent {
                event: Some(ask_event::Event::Sources(Sources {
                    citations: vec![cite("b.md"), cite("a.md")],
                })),
            };
            audit.observe::<_, ()>(&Ok(sources));
            let answer = AskEvent {
                event: Some(ask_event::Event::Answer(Answer {
                    citations: vec![cite("a.md")],
                    ..Answer::default()
                })),
            };
            audit.observe::<_, ()>(&Ok(answer));
            drop(audit);
            let mut failed = Audit::new("delete", None, "hr");
            failed.document("gone.md");
            failed.observe::<AskEvent, _>(&Err("downstream"));
        });
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).expect("a JSON line"))
            .collect();
        assert_eq!(lines.len(), 2, "{text}");
        let ask = &lines[0];
        assert_eq!(ask["target"], "zhiku::audit");
        assert_eq!(ask["fields"]["action"], "ask");
        assert_eq!(ask["fields"]["principal"], "ann");
        assert_eq!(ask["fields"]["knowledge_base"], "hr");
        assert_eq!(ask["fields"]["documents"], r#"["a.md", "b.md"]"#);
        assert_eq!(ask["fields"]["outcome"], "ok");
        let delete = &lines[1];
        assert_eq!(delete["fields"]["principal"], "anonymous");
        assert_eq!(delete["fields"]["outcome"], "failed");
    }

    #[test]
    fn a_reader_is_kept_to_its_groups_and_knowledge_bases() {
        let ann = reader(Some(&["hr"]));
        assert!(require_kb(Some(&ann), "hr").is_ok());
        let err = require_kb(Some(&ann), "finance").unwrap_err().to_string();
        assert!(err.contains("ann") && err.contains("finance"), "{err}");
        assert!(require_kb(None, "finance").is_ok());

        // Whatever the request asked, a reader sees its own groups' documents.
        let mut filter = Some(Filter {
            readable_by: Some(zhiku_proto::v1::ReaderScope {
                groups: vec!["b".into()],
            }),
            ..Filter::default()
        });
        confine_filter(Some(&ann), &mut filter);
        assert_eq!(
            filter.and_then(|f| f.readable_by).map(|s| s.groups),
            Some(vec!["a".to_string()])
        );
        let mut none = None;
        confine_filter(Some(&ann), &mut none);
        assert!(none.is_some_and(|f| f.readable_by.is_some()));
        // An admin and a server without keys are not restricted.
        let mut open = None;
        confine_filter(None, &mut open);
        assert!(open.is_none());
        let admin = Principal::admin("root");
        confine_filter(Some(&admin), &mut open);
        assert!(open.is_none());
        assert!(may_create(None) && may_create(Some(&admin)) && !may_create(Some(&ann)));
    }
}
