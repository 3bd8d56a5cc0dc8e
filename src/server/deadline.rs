//! gRPC deadlines: a call whose `grpc-timeout` runs out ends with DEADLINE_EXCEEDED, as the gRPC spec and
//! critest ("should timeout if requested") expect.
//!
//! tonic's server enforces the header too, but answers CANCELLED "Timeout expired". This layer sits
//! inside tonic's timeout and fires [`MARGIN`] before it: tonic polls the service's future before its own
//! timer, so the answer from here is the one sent. The client gives up at its deadline either way.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;
use tonic::codegen::http;

/// How much earlier than tonic's own timer this layer answers: more than the tokio timer's 1 ms
/// resolution, so the two never fire in the same tick in tonic's favour.
pub const MARGIN: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Default)]
pub struct DeadlineLayer;

impl<S> tower::Layer<S> for DeadlineLayer {
    type Service = Deadline<S>;
    fn layer(&self, inner: S) -> Deadline<S> {
        Deadline { inner }
    }
}

#[derive(Clone)]
pub struct Deadline<S> {
    inner: S,
}

impl<S, B, R> tower::Service<http::Request<B>> for Deadline<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let timeout = req
            .headers()
            .get("grpc-timeout")
            .and_then(|v| v.to_str().ok())
            .and_then(grpc_timeout);
        let fut = self.inner.call(req);
        match timeout {
            None => Box::pin(fut),
            Some(t) => Box::pin(async move {
                match tokio::time::timeout(t.saturating_sub(MARGIN), fut).await {
                    Ok(r) => r,
                    Err(_) => Ok(tonic::Status::deadline_exceeded(format!(
                        "deadline of {t:?} exceeded"
                    ))
                    .into_http()),
                }
            }),
        }
    }
}

/// The `grpc-timeout` header's value: at most 8 digits and a unit (H, M, S, m, u, n). `None` for anything
/// else, which tonic's own layer then ignores as well.
pub fn grpc_timeout(value: &str) -> Option<Duration> {
    let unit = value.chars().last()?;
    let digits = &value[..value.len() - unit.len_utf8()];
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        'H' => Duration::from_secs(n * 3600),
        'M' => Duration::from_secs(n * 60),
        'S' => Duration::from_secs(n),
        'm' => Duration::from_millis(n),
        'u' => Duration::from_micros(n),
        'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::{Layer, Service, ServiceExt};

    #[test]
    fn timeout_header_values() {
        assert_eq!(grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(
            grpc_timeout("99999999n"),
            Some(Duration::from_nanos(99_999_999))
        );
        for bad in ["", "m", "5", "123456789m", "5x", "-5m", "5 m"] {
            assert_eq!(grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[tokio::test]
    async fn a_call_past_its_deadline_answers_deadline_exceeded() {
        let slow = tower::service_fn(|_: http::Request<()>| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("late")))
        });
        let mut svc = DeadlineLayer.layer(slow);
        let req = http::Request::builder()
            .header("grpc-timeout", "50m")
            .body(())
            .unwrap();
        let started = std::time::Instant::now();
        let resp = svc.ready().await.unwrap().call(req).await.unwrap();
        assert!(started.elapsed() < Duration::from_secs(5));
        let status = tonic::Status::from_header_map(resp.headers()).expect("grpc-status");
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded);

        let quick = tower::service_fn(|_: http::Request<()>| async {
            Ok::<_, std::convert::Infallible>(http::Response::new(String::from("ok")))
        });
        let req = http::Request::builder()
            .header("grpc-timeout", "5S")
            .body(())
            .unwrap();
        let resp = DeadlineLayer.layer(quick).call(req).await.unwrap();
        assert_eq!(resp.into_body(), "ok");
    }
}
