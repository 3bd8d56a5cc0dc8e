//! GetContainerEvents: CONTAINER_CREATED/STARTED/STOPPED/DELETED for kubelet's evented PLEG.
//!
//! One task follows the container table's change feed, turns state transitions into CRI events
//! (with the pod's status and its containers' statuses) and broadcasts them. Every subscriber has
//! a bounded buffer: a slow one misses events (counted in `ferrio_container_events_dropped_total`),
//! the runtime never waits for it.

use super::{convert, Daemon};
use crate::clock::now_ns;
use crate::container::lifecycle::ContainerState;
use crate::cri::v1 as cri;
use crate::state::Change;
use std::collections::HashMap;
use std::sync::Arc;
use tokio::sync::broadcast;

/// Events a subscriber may fall behind by before it misses some.
const SUBSCRIBER_BUFFER: usize = 1024;

pub struct Events {
    tx: broadcast::Sender<cri::ContainerEventResponse>,
}

impl Events {
    pub fn new() -> Events {
        Events {
            tx: broadcast::channel(SUBSCRIBER_BUFFER).0,
        }
    }

    pub fn subscribe(&self) -> broadcast::Receiver<cri::ContainerEventResponse> {
        self.tx.subscribe()
    }
}

impl Default for Events {
    fn default() -> Self {
        Self::new()
    }
}

fn event_type(s: ContainerState) -> Option<cri::ContainerEventType> {
    match s {
        ContainerState::Creating => None,
        ContainerState::Created => Some(cri::ContainerEventType::ContainerCreatedEvent),
        ContainerState::Running => Some(cri::ContainerEventType::ContainerStartedEvent),
        ContainerState::Exited => Some(cri::ContainerEventType::ContainerStoppedEvent),
    }
}

/// The pod's status and all its containers' statuses, as kubelet wants them with each event.
fn pod_context(
    d: &Daemon,
    sandbox_id: &str,
) -> (Option<cri::PodSandboxStatus>, Vec<cri::ContainerStatus>) {
    let pod = d
        .pods
        .find(sandbox_id)
        .ok()
        .flatten()
        .map(|s| convert::pod_sandbox_status(&s));
    let statuses = d
        .containers
        .of_sandbox(sandbox_id)
        .iter()
        .filter(|c| c.status().state() != ContainerState::Creating)
        .map(|c| convert::container_status(c))
        .collect();
    (pod, statuses)
}

/// Follow the container table and publish events until the daemon is gone.
pub fn spawn(daemon: &Arc<Daemon>) {
    let mut rx = daemon.containers.subscribe();
    let weak = Arc::downgrade(daemon);
    // Last known state and sandbox of every container, to see transitions and to describe a
    // container that has just been removed.
    let mut known: HashMap<String, (ContainerState, String)> = daemon
        .containers
        .list()
        .iter()
        .map(|c| {
            (
                c.id.clone(),
                (c.status().state(), c.meta.sandbox_id.clone()),
            )
        })
        .collect();
    tokio::spawn(async move {
        loop {
            let change = match rx.recv().await {
                Ok(c) => c,
                Err(broadcast::error::RecvError::Lagged(n)) => {
                    tracing::warn!(missed = n, "container event translator fell behind");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => return,
            };
            let Some(d) = weak.upgrade() else { return };
            let (id, ty, sandbox_id) = match change {
                Change::Inserted(id) | Change::Updated(id) => {
                    let Ok(Some(c)) = d.containers.find(&id) else {
                        continue;
                    };
                    let state = c.status().state();
                    let prev = known.insert(id.clone(), (state, c.meta.sandbox_id.clone()));
                    if prev.map(|p| p.0) == Some(state) {
                        continue;
                    }
                    let Some(ty) = event_type(state) else {
                        continue;
                    };
                    (id, ty, c.meta.sandbox_id.clone())
                }
                Change::Removed(id) => {
                    let Some((_, sandbox_id)) = known.remove(&id) else {
                        continue;
                    };
                    (
                        id,
                        cri::ContainerEventType::ContainerDeletedEvent,
                        sandbox_id,
                    )
                }
            };
            if ty == cri::ContainerEventType::ContainerStoppedEvent {
                super::nri::container_exited(&d, &id);
            }
            let (pod, statuses) = pod_context(&d, &sandbox_id);
            let ev = cri::ContainerEventResponse {
                container_id: id,
                container_event_type: ty as i32,
                created_at: now_ns(),
                pod_sandbox_status: pod,
                containers_statuses: statuses,
            };
            // No subscriber is not an error.
            let _ = d.events.tx.send(ev);
        }
    });
}
