//! Ask's history is trimmed with one CountTokens call, on the real generator (SmolLM2):
//! the orchestrator talks to it through a pass-through proxy that counts the calls.

mod common;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::BoxFuture;
use tonic::body::Body;
use tonic::server::NamedService;
use tonic::transport::Channel;
use zhiku_orchestrator::downstream::Deadline;
use zhiku_orchestrator::{Orchestrator, OrchestratorArgs};
use zhiku_proto::v1::generator_client::GeneratorClient;
use zhiku_proto::v1::{Chat, CountTokensRequest, Turn, count_tokens_request};
use zhiku_runtime::ServerArgs;

use common::{listener, smollm2_args};

/// Passes every call to the generator; counts CountTokens calls.
#[derive(Clone)]
struct CountingProxy {
    generator: Channel,
    count_tokens: Arc<AtomicUsize>,
}

impl NamedService for CountingProxy {
    const NAME: &'static str = "zhiku.v1.Generator";
}

impl tower::Service<http::Request<Body>> for CountingProxy {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if request.uri().path().ends_with("/CountTokens") {
            self.count_tokens.fetch_add(1, Ordering::SeqCst);
        }
        let mut generator = self.generator.clone();
        Box::pin(async move {
            use tower::ServiceExt;
            Ok(match generator.ready().await {
                Ok(ready) => match ready.call(request).await {
                    Ok(response) => response,
                    Err(e) => tonic::Status::unavailable(e.to_string()).into_http(),
                },
                Err(e) => tonic::Status::unavailable(e.to_string()).into_http(),
            })
        })
    }
}

async fn count(generator: &mut GeneratorClient<Channel>, chat: Chat) -> (u32, Vec<u32>, u32) {
    let response = generator
        .count_tokens(CountTokensRequest {
            input: Some(count_tokens_request::Input::Chat(chat)),
            without_first: true,
        })
        .await
        .expect("count")
        .into_inner();
    (
        response.tokens,
        response.without_first,
        response.context_length,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_history_is_trimmed_with_one_count() {
    let args = smollm2_args();
    let (generator_listener, generator_addr) = listener().await;
    let (_stop_generator, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(zhiku_generator::serve(
        args,
        ServerArgs::default(),
        generator_listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{generator_addr}"))
        .unwrap()
        .connect_lazy();
    let mut generator = GeneratorClient::new(channel.clone());
    let question = Chat {
        messages: vec![zhiku_proto::v1::ChatMessage {
            role: zhiku_proto::v1::Role::User as i32,
            content: "hello".into(),
        }],
    };
    // The model loads in the background: UNAVAILABLE until it has.
    let mut loaded = false;
    for _ in 0..1200 {
        if generator
            .count_tokens(CountTokensRequest {
                input: Some(count_tokens_request::Input::Chat(question.clone())),
                without_first: false,
            })
            .await
            .is_ok()
        {
            loaded = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(loaded, "the generator did not load");

    let calls = Arc::new(AtomicUsize::new(0));
    let (proxy_listener, proxy_addr) = listener().await;
    let proxy = CountingProxy {
        generator: channel,
        count_tokens: calls.clone(),
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(proxy)
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(
                proxy_listener,
            )),
    );

    let mut orchestrator_args = OrchestratorArgs::local(1, 1, proxy_addr.port());
    orchestrator_args.ask.max_history_turns = 1_000;
    let orchestrator = Orchestrator::new(orchestrator_args).expect("orchestrator");

    // Sixty turns of a few hundred tokens each: far more than SmolLM2's context holds.
    let history: Vec<Turn> = (0..60)
        .map(|i| Turn {
            question: format!("Question {i}: what does the handbook say about topic {i}? ")
                .repeat(12),
            answer: format!("Answer {i}: the handbook says topic {i} is covered in part {i}. ")
                .repeat(12),
        })
        .collect();
    let prompt = "Known information: [1] The handbook has sixty parts.\nQuestion: how many?";
    let max_new_tokens = 512;
    let chat = orchestrator
        .fit_history(&history, prompt, max_new_tokens, Deadline(None))
        .await
        .expect("fit");
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "one CountTokens call trims the whole history"
    );

    // The most recent turns are kept, the question last.
    let messages = &chat.messages;
    assert_eq!(messages.last().unwrap().content, prompt);
    let kept = (messages.len() - 1) / 2;
    assert!(kept > 0 && kept < history.len(), "kept {kept} turns");
    let first = history.len() - kept;
    assert_eq!(messages[0].content, history[first].question);
    assert_eq!(messages[messages.len() - 2].content, history[59].answer);

    // It fits, and one turn more would not (counted exactly, each on its own).
    let (tokens, _, context) = count(&mut generator, chat.clone()).await;
    assert!(
        tokens + max_new_tokens <= context,
        "{tokens} + {max_new_tokens} > {context}"
    );
    let mut one_more = chat.clone();
    one_more
        .messages
        .splice(0..0, messages_of(&history[first - 1]));
    let (more, _, _) = count(&mut generator, one_more).await;
    assert!(more + max_new_tokens > context, "{more} would have fit");

    // The counts without the first k messages equal those of the shorter chats when they
    // start with a question, as trimmed histories do (ChatML wraps every message of a role
    // in the same text).
    let (_, without_first, _) = count(&mut generator, chat.clone()).await;
    assert_eq!(without_first.len(), messages.len());
    for k in [0, 2, 4, messages.len() - 1] {
        let rest = Chat {
            messages: messages[k..].to_vec(),
        };
        let (exact, _, _) = count(&mut generator, rest).await;
        assert_eq!(without_first[k], exact, "without the first {k} messages");
    }
}

fn messages_of(turn: &Turn) -> Vec<zhiku_proto::v1::ChatMessage> {
    use zhiku_proto::v1::{ChatMessage, Role};
    vec![
        ChatMessage {
            role: Role::User as i32,
            content: turn.question.clone(),
        },
        ChatMessage {
            role: Role::Assistant as i32,
            content: turn.answer.clone(),
        },
    ]
}

/// Ask checks its sizes before any downstream call: with nothing listening downstream, an
/// oversized question or history is INVALID_ARGUMENT naming its flag, not UNAVAILABLE.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_questions_and_histories_are_refused_before_any_call() {
    use tokio_stream::StreamExt;
    use zhiku_proto::v1::AskRequest;
    use zhiku_proto::v1::orchestrator_client::OrchestratorClient;

    // Ports with nothing behind them.
    let dead = {
        let (_l, addr) = listener().await;
        addr.port()
    };
    let (orchestrator_listener, orchestrator_addr) = listener().await;
    let (_stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(zhiku_orchestrator::serve(
        OrchestratorArgs::local(dead, dead, dead),
        ServerArgs::default(),
        orchestrator_listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let channel = Channel::from_shared(format!("http://{orchestrator_addr}"))
        .unwrap()
        .connect_lazy();
    let client = OrchestratorClient::new(channel);
    let ask = |request: AskRequest| {
        let mut client = client.clone();
        async move {
            match client.ask(request).await {
                Err(status) => status,
                Ok(stream) => match stream.into_inner().next().await {
                    Some(Err(status)) => status,
                    other => panic!("expected an error, got {other:?}"),
                },
            }
        }
    };
    let long_question = AskRequest {
        question: "问".repeat(4_001),
        knowledge_base: "kb".into(),
        ..Default::default()
    };
    // The orchestrator loads in the background: UNAVAILABLE until it has.
    let mut status = ask(long_question.clone()).await;
    for _ in 0..100 {
        if status.code() != tonic::Code::Unavailable {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        status = ask(long_question.clone()).await;
    }
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("4000 characters")
            && status.message().contains("--max-question-chars"),
        "{status:?}"
    );
    let long_history = AskRequest {
        question: "今天开门吗？".into(),
        knowledge_base: "kb".into(),
        history: vec![
            Turn {
                question: "问".repeat(10_000),
                answer: "答".repeat(20_000),
            };
            2
        ],
        ..Default::default()
    };
    let status = ask(long_history).await;
    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
    assert!(
        status.message().contains("180000 bytes")
            && status.message().contains("--max-history-bytes"),
        "{status:?}"
    );
    // Only the turns --max-history-turns keeps count: an old long turn does not.
    let mut old_long = vec![Turn::default(); 16];
    old_long.insert(
        0,
        Turn {
            question: "问".repeat(30_000),
            answer: String::new(),
        },
    );
    let status = ask(AskRequest {
        question: "今天开门吗？".into(),
        knowledge_base: "kb".into(),
        history: old_long,
        ..Default::default()
    })
    .await;
    assert_ne!(status.code(), tonic::Code::InvalidArgument, "{status:?}");
}
