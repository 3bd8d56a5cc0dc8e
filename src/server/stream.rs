//! Exec, Attach and PortForward: they hand out URLs on the streaming server.

use super::Daemon;
use super::{not_yet, Res};
use k8s_cri::v1 as cri;
use std::sync::Arc;
use tonic::Request;

pub(super) async fn exec(
    _d: &Arc<Daemon>,
    _req: Request<cri::ExecRequest>,
) -> Res<cri::ExecResponse> {
    Err(not_yet("Exec"))
}

pub(super) async fn attach(
    _d: &Arc<Daemon>,
    _req: Request<cri::AttachRequest>,
) -> Res<cri::AttachResponse> {
    Err(not_yet("Attach"))
}

pub(super) async fn port_forward(
    _d: &Arc<Daemon>,
    _req: Request<cri::PortForwardRequest>,
) -> Res<cri::PortForwardResponse> {
    Err(not_yet("PortForward"))
}
