//! The body of a response from a replica: it holds the replica's call in flight until it
//! ends, gives back the frame read ahead to see whether the call started, and turns a
//! generation that breaks after its first token into a clear UNAVAILABLE.

use std::pin::Pin;
use std::task::{Context, Poll};

use http_body::{Frame, SizeHint};
use tonic::body::Body;

use super::metrics::InFlight;

/// The data of a tonic body.
pub type Bytes = <Body as http_body::Body>::Data;

pub struct ReplicaBody {
    /// A frame read ahead (the first), given back first.
    pub ahead: Option<Frame<Bytes>>,
    pub inner: Body,
    /// Ends with the body (dropped with it).
    pub in_flight: InFlight,
    /// For a generation that had started: which replica, to name in the UNAVAILABLE that
    /// replaces a broken stream.
    pub started_on: Option<std::sync::Arc<str>>,
}

impl http_body::Body for ReplicaBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        if let Some(frame) = self.ahead.take() {
            return Poll::Ready(Some(Ok(frame)));
        }
        match Pin::new(&mut self.inner).poll_frame(cx) {
            Poll::Ready(Some(Err(status))) => {
                let status = match &self.started_on {
                    Some(replica) => tonic::Status::unavailable(format!(
                        "the generator replica {replica} was lost while it streamed: {}",
                        status.message()
                    )),
                    None => status,
                };
                Poll::Ready(Some(Err(status)))
            }
            other => other,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.ahead.is_none() && self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        match &self.ahead {
            Some(_) => SizeHint::default(),
            None => self.inner.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use http_body_util::BodyExt;

    use super::*;
    use crate::replicas::{ReplicaArgs, ReplicaSet};

    /// A response body that gives `frames` (data, or errors) in turn.
    fn body_of(frames: Vec<Result<&'static str, tonic::Status>>) -> Body {
        let frames = frames
            .into_iter()
            .map(|f| f.map(|text| Frame::data(Bytes::from(text))));
        Body::new(http_body_util::StreamBody::new(futures::stream::iter(
            frames,
        )))
    }

    fn in_flight() -> (ReplicaSet, InFlight) {
        let set = ReplicaSet::new(
            "generator",
            "zhiku.v1.Generator",
            "http://127.0.0.1:1",
            None,
            Default::default(),
            ReplicaArgs {
                downstream_health_interval_ms: 500,
                downstream_dns_refresh_seconds: 5,
                generator_routing: crate::replicas::GenerationRouting::Prefix,
                generator_prefix_routes: 10,
                generator_max_imbalance: 4,
            },
        )
        .unwrap();
        let replica = Arc::clone(&set.snapshot()[0]);
        let guard = InFlight::start(&replica);
        (set, guard)
    }

    #[tokio::test]
    async fn a_generation_broken_after_its_first_frame_ends_unavailable_naming_the_replica() {
        let (set, in_flight) = in_flight();
        assert_eq!(set.in_flight()[0].1, 1);
        let mut body = ReplicaBody {
            ahead: Some(Frame::data(Bytes::from("first"))),
            inner: body_of(vec![
                Ok("second"),
                Err(tonic::Status::unknown(
                    "h2 protocol error: connection reset",
                )),
            ]),
            in_flight,
            started_on: Some(Arc::from("http://127.0.0.1:1")),
        };
        let first = body.frame().await.unwrap().unwrap();
        assert_eq!(first.into_data().unwrap(), "first");
        let second = body.frame().await.unwrap().unwrap();
        assert_eq!(second.into_data().unwrap(), "second");
        let broken = body.frame().await.unwrap().unwrap_err();
        assert_eq!(broken.code(), tonic::Code::Unavailable);
        assert!(
            broken.message().contains("http://127.0.0.1:1"),
            "{broken:?}"
        );
        assert!(broken.message().contains("connection reset"), "{broken:?}");
        drop(body);
        // The call is no longer in flight once its body is gone.
        assert_eq!(set.in_flight()[0].1, 0);
    }

    #[tokio::test]
    async fn other_calls_keep_their_own_error() {
        let (_set, in_flight) = in_flight();
        let mut body = ReplicaBody {
            ahead: None,
            inner: body_of(vec![Err(tonic::Status::internal("boom"))]),
            in_flight,
            started_on: None,
        };
        let error = body.frame().await.unwrap().unwrap_err();
        assert_eq!(error.code(), tonic::Code::Internal);
    }
}
