//! The membership nemesis's operator: stages one change on a node and commits it, the way
//! `cartctl cluster leave/join` + `commit` do, retrying (bounded) while the cluster is still
//! moving carts for an earlier change or a node does not answer. Both tiers use it: the real tier
//! over TCP, the simulation over turmoil (the `connect` of [`cart_client::Connect`]).

use std::time::Duration;

use cart_proto::admin_pb::admin_service_client::AdminServiceClient;
use cart_proto::admin_pb::{CommitLayoutRequest, DiscardStagedRequest, StageChangeRequest, StagedChange};
use cart_proto::SECRET_HEADER;

/// A membership change the nemesis makes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    Leave { node_id: String },
    Join { node_id: String, addr: String },
}

/// Attempts (each staging and committing on one node) before the change is given up.
pub const ATTEMPTS: usize = 40;
const PAUSE: Duration = Duration::from_millis(250);

/// Stages `change` on one of `endpoints` (next one on failure) and commits it; `Ok` with the
/// attempts it took, or the last error once [`ATTEMPTS`] have failed.
pub async fn apply(
    endpoints: &[String],
    secret: &str,
    change: &Change,
    connect: &cart_client::Connect,
    credentials: &cart_client::Credentials,
) -> Result<usize, String> {
    let mut last = String::from("no endpoint");
    for attempt in 0..ATTEMPTS {
        let Some(endpoint) = endpoints.get(attempt % endpoints.len().max(1)) else {
            break;
        };
        match once(endpoint, secret, change, connect, credentials).await {
            Ok(()) => return Ok(attempt + 1),
            Err(e) => last = format!("{endpoint}: {e}"),
        }
        tokio::time::sleep(PAUSE).await;
    }
    Err(last)
}

/// A request with the call deadline, the cluster secret and the API token (if any).
fn request<T>(message: T, secret: &str, credentials: &cart_client::Credentials) -> Result<tonic::Request<T>, String> {
    let mut r = tonic::Request::new(message);
    credentials.authorize(&mut r);
    r.set_timeout(Duration::from_secs(3));
    let secret = secret.parse().map_err(|_| "secret is not ASCII".to_string())?;
    r.metadata_mut().insert(SECRET_HEADER, secret);
    Ok(r)
}

async fn once(
    endpoint: &str,
    secret: &str,
    change: &Change,
    connect: &cart_client::Connect,
    credentials: &cart_client::Credentials,
) -> Result<(), String> {
    let uri = credentials.endpoint(endpoint).map_err(|e| e.to_string())?;
    let mut admin = AdminServiceClient::new(connect(uri.connect_timeout(Duration::from_millis(500))));
    let staged = match change {
        Change::Leave { node_id } => StagedChange {
            kind: "leave".into(),
            node_id: node_id.clone(),
            ..StagedChange::default()
        },
        Change::Join { node_id, addr } => StagedChange {
            kind: "join".into(),
            node_id: node_id.clone(),
            addr: addr.clone(),
            weight: 1,
            ..StagedChange::default()
        },
    };
    let call = async {
        // Whatever an earlier failed attempt left staged here goes first.
        admin
            .discard_staged(request(DiscardStagedRequest {}, secret, credentials)?)
            .await
            .map_err(|s| s.message().to_owned())?;
        admin
            .stage_change(request(
                StageChangeRequest { change: Some(staged) },
                secret,
                credentials,
            )?)
            .await
            .map_err(|s| s.message().to_owned())?;
        admin
            .commit_layout(request(CommitLayoutRequest {}, secret, credentials)?)
            .await
            .map_err(|s| s.message().to_owned())?;
        Ok::<(), String>(())
    };
    tokio::time::timeout(Duration::from_secs(10), call)
        .await
        .map_err(|_| "timed out".to_string())?
}
