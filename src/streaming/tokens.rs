//! One-shot tokens: the random path segment of a streaming URL. A token is taken out of the
//! table on first use, expires after a short TTL, and only so many may be in flight, as kubelet's
//! and CRI-O's streaming caches (1 minute, 1000).

use super::{Request, StreamError};
use base64::Engine;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone)]
pub struct Tokens {
    inner: Arc<Mutex<HashMap<String, (Instant, Request)>>>,
    ttl: Duration,
    max: usize,
}

impl Tokens {
    pub fn new(ttl: Duration, max: usize) -> Tokens {
        Tokens {
            inner: Arc::new(Mutex::new(HashMap::new())),
            ttl,
            max,
        }
    }

    /// A fresh token for `req`; fails when `max` unexpired tokens are waiting.
    pub fn insert(&self, req: Request) -> Result<String, StreamError> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (deadline, _)| *deadline > now);
        if map.len() >= self.max {
            return Err(StreamError::TooManyRequests {
                in_flight: map.len(),
            });
        }
        let token =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(rand::random::<[u8; 24]>());
        map.insert(token.clone(), (now + self.ttl, req));
        Ok(token)
    }

    /// The request behind `token`, once; `None` when unknown, used or expired.
    pub fn take(&self, token: &str) -> Option<Request> {
        let mut map = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (deadline, req) = map.remove(token)?;
        (deadline > Instant::now()).then_some(req)
    }

    pub fn in_flight(&self) -> usize {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::streaming::PortForwardRequest;

    fn req() -> Request {
        Request::PortForward(PortForwardRequest {
            pod_sandbox_id: "p".into(),
            ports: vec![80],
        })
    }

    #[test]
    fn one_shot() {
        let t = Tokens::new(Duration::from_secs(60), 10);
        let a = t.insert(req()).unwrap();
        let b = t.insert(req()).unwrap();
        assert_ne!(a, b);
        assert!(a.len() >= 32);
        assert_eq!(t.take(&a), Some(req()));
        assert_eq!(t.take(&a), None);
        assert_eq!(t.take("nope"), None);
        assert_eq!(t.in_flight(), 1);
    }

    #[test]
    fn expired_and_capped() {
        let t = Tokens::new(Duration::from_millis(30), 2);
        let a = t.insert(req()).unwrap();
        t.insert(req()).unwrap();
        assert!(matches!(
            t.insert(req()),
            Err(StreamError::TooManyRequests { in_flight: 2 })
        ));
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(t.take(&a), None, "expired");
        // Expired tokens free their slots.
        t.insert(req()).unwrap();
        t.insert(req()).unwrap();
    }
}
