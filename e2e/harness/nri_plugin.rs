//! A small NRI plugin for the tests: it connects to a daemon's NRI socket as an external plugin would (with
//! ferrio's own protocol code), records every event it sees, adjusts containers (an env var, an annotation
//! and, when given one, a mount), and on request refuses, hangs on or walks away from a CreateContainer.

use ferrio::nri::api;
use ferrio::nri::conn::{Connection, CODE_UNKNOWN, PLUGIN_SERVICE_CONN, RUNTIME_SERVICE_CONN};
use ferrio::nri::{event_bit, RUNTIME_SERVICE};
use prost::Message;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The message a refused CreateContainer fails with.
pub const REFUSAL: &str = "the e2e plugin refuses this container";
/// The env var every adjusted container gets.
pub const ADJUSTED_ENV: &str = "NRI_E2E=adjusted";
/// The annotation every adjusted container gets.
pub const ADJUSTED_ANNOTATION: (&str, &str) = ("e2e.nri/adjusted", "yes");

/// What the test plugin saw and how it behaves.
#[derive(Default)]
pub struct PluginState {
    /// (method, pod id, container name) of every event, in arrival order.
    pub events: Mutex<Vec<(String, String, String)>>,
    /// Refuse the next CreateContainer.
    pub refuse_create: AtomicBool,
    /// Never answer a CreateContainer (the daemon's request timeout ends the wait).
    pub hang_create: AtomicBool,
    /// Close the connection when a CreateContainer arrives, as a plugin that dies mid-request does.
    pub close_on_create: AtomicBool,
    /// A mount to add to every container.
    pub mount: Mutex<Option<api::Mount>>,
    /// (pods, containers) of the last Synchronize.
    pub synchronized: Mutex<Option<(usize, usize)>>,
}

impl PluginState {
    /// The methods of the events seen so far, in order.
    pub fn methods(&self) -> Vec<String> {
        self.events
            .lock()
            .unwrap()
            .iter()
            .map(|(m, _, _)| m.clone())
            .collect()
    }

    /// Wait until the daemon synchronized the plugin; (pods, containers) it was told of.
    pub async fn wait_synchronized(&self) -> (usize, usize) {
        for _ in 0..100 {
            if let Some(s) = *self.synchronized.lock().unwrap() {
                return s;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("the plugin was never synchronized");
    }
}

/// A connected test plugin.
pub struct TestPlugin {
    pub conn: Arc<Connection>,
    pub state: Arc<PluginState>,
}

/// How the plugin answers one request.
enum Answer {
    Reply(Result<Vec<u8>, (i32, String)>),
    Hang,
    Close,
}

impl TestPlugin {
    /// Connect to `socket`, register as `<idx>-<name>`, and serve events until the daemon goes away (or the
    /// plugin is told to close).
    pub async fn connect(
        socket: &Path,
        idx: &str,
        name: &str,
        state: Arc<PluginState>,
    ) -> TestPlugin {
        let stream = tokio::net::UnixStream::connect(socket)
            .await
            .unwrap_or_else(|e| panic!("connect to the NRI socket {}: {e}", socket.display()));
        let (conn, mut requests) =
            Connection::new(stream, RUNTIME_SERVICE_CONN, PLUGIN_SERVICE_CONN);
        let server = conn.clone();
        let serving = state.clone();
        tokio::spawn(async move {
            while let Some(r) = requests.recv().await {
                match handle(&serving, &r.method, &r.payload) {
                    Answer::Reply(answer) => {
                        let _ = server.respond(r.stream_id, answer).await;
                    }
                    Answer::Hang => {}
                    Answer::Close => {
                        server.shutdown().await;
                        return;
                    }
                }
            }
        });
        let register = api::RegisterPluginRequest {
            plugin_name: name.into(),
            plugin_idx: idx.into(),
            nri_version: "v0.12.1".into(),
        };
        let _: api::Empty = conn
            .call(
                RUNTIME_SERVICE,
                "RegisterPlugin",
                &register,
                Duration::from_secs(5),
            )
            .await
            .expect("RegisterPlugin");
        TestPlugin { conn, state }
    }
}

/// The reply to one request; a CreateContainer is recorded first, then hung on or walked away from when the
/// plugin is told to.
fn handle(state: &PluginState, method: &str, payload: &[u8]) -> Answer {
    let answer = reply(state, method, payload);
    if method == "CreateContainer" {
        if state.close_on_create.load(Ordering::SeqCst) {
            return Answer::Close;
        }
        if state.hang_create.load(Ordering::SeqCst) {
            return Answer::Hang;
        }
    }
    Answer::Reply(answer)
}

fn reply(state: &PluginState, method: &str, payload: &[u8]) -> Result<Vec<u8>, (i32, String)> {
    fn names(pod: &Option<api::PodSandbox>, ctr: &Option<api::Container>) -> (String, String) {
        (
            pod.as_ref().map(|p| p.id.clone()).unwrap_or_default(),
            ctr.as_ref().map(|c| c.name.clone()).unwrap_or_default(),
        )
    }
    let decode_err = |e: prost::DecodeError| (CODE_UNKNOWN, e.to_string());
    let record = |pod_ctr: (String, String)| {
        state
            .events
            .lock()
            .unwrap()
            .push((method.to_string(), pod_ctr.0, pod_ctr.1));
    };
    match method {
        "Configure" => {
            let events = [
                api::Event::RunPodSandbox,
                api::Event::StopPodSandbox,
                api::Event::RemovePodSandbox,
                api::Event::CreateContainer,
                api::Event::PostCreateContainer,
                api::Event::StartContainer,
                api::Event::PostStartContainer,
                api::Event::UpdateContainer,
                api::Event::PostUpdateContainer,
                api::Event::StopContainer,
                api::Event::RemoveContainer,
            ]
            .into_iter()
            .map(event_bit)
            .fold(0, |a, b| a | b);
            Ok(api::ConfigureResponse { events }.encode_to_vec())
        }
        "Synchronize" => {
            let r = api::SynchronizeRequest::decode(payload).map_err(decode_err)?;
            *state.synchronized.lock().unwrap() = Some((r.pods.len(), r.containers.len()));
            Ok(api::SynchronizeResponse::default().encode_to_vec())
        }
        "RunPodSandbox" | "StopPodSandbox" | "RemovePodSandbox" => {
            let r = api::RunPodSandboxRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &None));
            Ok(Vec::new())
        }
        "CreateContainer" => {
            let r = api::CreateContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            if state.refuse_create.swap(false, Ordering::SeqCst) {
                return Err((CODE_UNKNOWN, REFUSAL.into()));
            }
            let (key, value) = ADJUSTED_ENV.split_once('=').expect("KEY=value");
            let adjust = api::ContainerAdjustment {
                env: vec![api::KeyValue {
                    key: key.into(),
                    value: value.into(),
                }],
                annotations: [(
                    ADJUSTED_ANNOTATION.0.to_string(),
                    ADJUSTED_ANNOTATION.1.to_string(),
                )]
                .into(),
                mounts: state.mount.lock().unwrap().clone().into_iter().collect(),
                ..Default::default()
            };
            Ok(api::CreateContainerResponse {
                adjust: Some(adjust),
                ..Default::default()
            }
            .encode_to_vec())
        }
        "UpdateContainer" => {
            let r = api::UpdateContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(api::UpdateContainerResponse::default().encode_to_vec())
        }
        "StopContainer" => {
            let r = api::StopContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(api::StopContainerResponse::default().encode_to_vec())
        }
        // Every other container event has the (pod, container) layout of StartContainerRequest.
        _ => {
            let r = api::StartContainerRequest::decode(payload).map_err(decode_err)?;
            record(names(&r.pod, &r.container));
            Ok(Vec::new())
        }
    }
}
