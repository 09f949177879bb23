//! HTTP control surface for scripts: act as the person or the environment around a simulated
//! device (axum).
//!
//! Lock board ([`lockboard_router`]):
//!
//! | Method & path | Effect |
//! |---|---|
//! | `GET /state` | JSON [`LockBoardState`]: doors, parcels, pulse counts, link faults |
//! | `POST /doors/{i}/open` | a person opens door i |
//! | `POST /doors/{i}/close` | a person closes door i |
//! | `POST /doors/{i}/pulse` | fire lock i as a coil write would |
//! | `POST /doors/{i}/parcel` | put a parcel into compartment i |
//! | `POST /doors/{i}/take` | take the parcel out |
//! | `POST /doors/{i}/jam?on=true\|false` | jam or free lock i |
//! | `POST /doors/{i}/stuck?value=open\|closed\|none` | stick door sensor i |
//! | `POST /unresponsive?on=true\|false` | stop / resume answering Modbus |
//! | `POST /delay?ms=N` | delay every Modbus answer |
//! | `POST /auto-close?ms=N` | close doors N ms after opening (0 disables) |
//!
//! Door endpoints answer the door's new [`crate::lockboard::DoorState`]; the others the board
//! state. Charger ([`charger_router`]): `GET /state` ([`ChargerSnapshot`]), `POST /time?hour=H`,
//! `/speed?x=X`, `/cloud?pct=P`, `/load?w=W`, `/soc?pct=P`, `/fault?on=B` (battery status reads
//! 4, fault), `/unresponsive?on=B`, `/delay?ms=N`,
//! each answering the new snapshot. A bad lock index answers 404, an out-of-range value 400,
//! both with `{"error": "..."}`.

use std::{net::SocketAddr, time::Duration};

use axum::{
    extract::{Path, Query, State},
    http::StatusCode,
    response::{IntoResponse, Response},
    routing::{get, post},
    Json, Router,
};
use serde::Deserialize;
use tokio::{net::TcpListener, task::JoinHandle};

use crate::{
    charger::{ChargerError, ChargerSim, ChargerSnapshot},
    lockboard::{DoorState, LockBoardError, LockBoardSim, LockBoardState},
    modbus::Bind,
};

/// Errors of the control surface.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// Lock board refused the call.
    #[error(transparent)]
    Board(#[from] LockBoardError),
    /// Charger refused the call.
    #[error(transparent)]
    Charger(#[from] ChargerError),
    /// Binding or serving HTTP failed.
    #[error("control HTTP server: {0}")]
    Io(#[from] std::io::Error),
    /// Binding failed.
    #[error(transparent)]
    Bind(#[from] crate::modbus::ModbusError),
}

impl IntoResponse for ControlError {
    fn into_response(self) -> Response {
        let status = match &self {
            Self::Board(LockBoardError::NoSuchLock { .. }) => StatusCode::NOT_FOUND,
            Self::Board(_) | Self::Charger(_) => StatusCode::BAD_REQUEST,
            Self::Io(_) | Self::Bind(_) => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (
            status,
            Json(serde_json::json!({ "error": self.to_string() })),
        )
            .into_response()
    }
}

type DoorResult = Result<Json<DoorState>, ControlError>;

#[derive(Debug, Deserialize)]
struct On {
    on: bool,
}

#[derive(Debug, Deserialize)]
struct Ms {
    ms: u64,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "lowercase")]
enum Stuck {
    Open,
    Closed,
    None,
}

#[derive(Debug, Deserialize)]
struct StuckQuery {
    value: Stuck,
}

fn door(sim: &LockBoardSim, i: usize) -> DoorResult {
    Ok(Json(sim.door(i)?))
}

/// Routes controlling one lock board.
pub fn lockboard_router(sim: LockBoardSim) -> Router {
    Router::new()
        .route("/state", get(|State(s): State<LockBoardSim>| async move { Json(s.state()) }))
        .route(
            "/doors/{i}/open",
            post(|State(s): State<LockBoardSim>, Path(i): Path<usize>| async move {
                s.open_door(i)?;
                door(&s, i)
            }),
        )
        .route(
            "/doors/{i}/close",
            post(|State(s): State<LockBoardSim>, Path(i): Path<usize>| async move {
                s.close_door(i)?;
                door(&s, i)
            }),
        )
        .route(
            "/doors/{i}/pulse",
            post(|State(s): State<LockBoardSim>, Path(i): Path<usize>| async move {
                s.pulse(i)?;
                door(&s, i)
            }),
        )
        .route(
            "/doors/{i}/parcel",
            post(|State(s): State<LockBoardSim>, Path(i): Path<usize>| async move {
                s.put_parcel(i)?;
                door(&s, i)
            }),
        )
        .route(
            "/doors/{i}/take",
            post(|State(s): State<LockBoardSim>, Path(i): Path<usize>| async move {
                s.take_parcel(i)?;
                door(&s, i)
            }),
        )
        .route(
            "/doors/{i}/jam",
            post(
                |State(s): State<LockBoardSim>, Path(i): Path<usize>, Query(q): Query<On>| async move {
                    s.set_jammed(i, q.on)?;
                    door(&s, i)
                },
            ),
        )
        .route(
            "/doors/{i}/stuck",
            post(
                |State(s): State<LockBoardSim>,
                 Path(i): Path<usize>,
                 Query(q): Query<StuckQuery>| async move {
                    let value = match q.value {
                        Stuck::Open => Some(true),
                        Stuck::Closed => Some(false),
                        Stuck::None => None,
                    };
                    s.set_stuck_sensor(i, value)?;
                    door(&s, i)
                },
            ),
        )
        .route("/unresponsive", post(board_unresponsive))
        .route("/delay", post(board_delay))
        .route("/auto-close", post(board_auto_close))
        .with_state(sim)
}

async fn board_unresponsive(
    State(s): State<LockBoardSim>,
    Query(q): Query<On>,
) -> Json<LockBoardState> {
    s.set_unresponsive(q.on);
    Json(s.state())
}

async fn board_delay(State(s): State<LockBoardSim>, Query(q): Query<Ms>) -> Json<LockBoardState> {
    s.set_delay(Duration::from_millis(q.ms));
    Json(s.state())
}

async fn board_auto_close(
    State(s): State<LockBoardSim>,
    Query(q): Query<Ms>,
) -> Json<LockBoardState> {
    s.set_auto_close((q.ms > 0).then(|| Duration::from_millis(q.ms)));
    Json(s.state())
}

#[derive(Debug, Deserialize)]
struct HourQ {
    hour: f64,
}
#[derive(Debug, Deserialize)]
struct SpeedQ {
    x: f64,
}
#[derive(Debug, Deserialize)]
struct PctQ {
    pct: f64,
}
#[derive(Debug, Deserialize)]
struct WattQ {
    w: f64,
}

type SnapResult = Result<Json<ChargerSnapshot>, ControlError>;

/// Routes controlling one charge controller.
pub fn charger_router(sim: ChargerSim) -> Router {
    Router::new()
        .route(
            "/state",
            get(|State(s): State<ChargerSim>| async move { Json(s.snapshot()) }),
        )
        .route(
            "/time",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<HourQ>| async move {
                    s.set_time_of_day(q.hour)?;
                    SnapResult::Ok(Json(s.snapshot()))
                },
            ),
        )
        .route(
            "/speed",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<SpeedQ>| async move {
                    s.set_speed(q.x)?;
                    SnapResult::Ok(Json(s.snapshot()))
                },
            ),
        )
        .route(
            "/cloud",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<PctQ>| async move {
                    s.set_cloudiness(q.pct)?;
                    SnapResult::Ok(Json(s.snapshot()))
                },
            ),
        )
        .route(
            "/load",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<WattQ>| async move {
                    s.set_load_w(q.w)?;
                    SnapResult::Ok(Json(s.snapshot()))
                },
            ),
        )
        .route(
            "/soc",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<PctQ>| async move {
                    s.set_soc(q.pct)?;
                    SnapResult::Ok(Json(s.snapshot()))
                },
            ),
        )
        .route(
            "/fault",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<On>| async move {
                    s.set_fault(q.on);
                    Json(s.snapshot())
                },
            ),
        )
        .route(
            "/unresponsive",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<On>| async move {
                    s.set_unresponsive(q.on);
                    Json(s.snapshot())
                },
            ),
        )
        .route(
            "/delay",
            post(
                |State(s): State<ChargerSim>, Query(q): Query<Ms>| async move {
                    s.set_delay(Duration::from_millis(q.ms));
                    Json(s.snapshot())
                },
            ),
        )
        .with_state(sim)
}

/// Serve `router` over HTTP until the returned task is aborted; returns the bound address.
pub async fn serve_http(
    bind: impl Into<Bind>,
    router: Router,
) -> Result<(SocketAddr, JoinHandle<()>), ControlError> {
    let (listener, addr): (TcpListener, SocketAddr) = bind.into().listen().await?;
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, router).await {
            tracing::error!(%err, "control HTTP server stopped");
        }
    });
    Ok((addr, task))
}
