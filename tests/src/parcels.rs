//! The parcel world of end-to-end tests: a gateway with carrier and site-manager tokens, one
//! site holding real cabinets, two carriers with a courier each, and helpers to create orders
//! and read what recipients are told.

use locker_gateway::api::scope::{ScopeName, ScopedToken, TokenSpec};
use locker_gateway::config::GatewayConfig;
use serde_json::{json, Value};

use crate::api::ApiClient;
use crate::eventually_async;

/// The site every parcel test uses.
pub const SITE: &str = "test-site";
/// Carrier tokens (scope carrier) and a site manager's.
pub const DHL_TOKEN: &str = "dhl-token-0123456789abcdef";
pub const UPS_TOKEN: &str = "ups-token-0123456789abcdef";
pub const MANAGER_TOKEN: &str = "mgr-token-0123456789abcdef";
/// Courier badges.
pub const DHL_BADGE: &str = "BADGE-DHL-0001";
pub const UPS_BADGE: &str = "BADGE-UPS-0001";

/// Adds the carrier and site-manager tokens to a gateway configuration.
pub fn tokens(cfg: &mut GatewayConfig) {
    let carrier = |name: &str, carrier: &str| {
        TokenSpec::Scoped(ScopedToken {
            name: name.into(),
            scope: ScopeName::Carrier,
            carrier: Some(carrier.parse().expect("carrier id")),
            sites: Default::default(),
        })
    };
    cfg.api
        .tokens
        .insert(DHL_TOKEN.into(), carrier("dhl-api", "dhl"));
    cfg.api
        .tokens
        .insert(UPS_TOKEN.into(), carrier("ups-api", "ups"));
    cfg.api.tokens.insert(
        MANAGER_TOKEN.into(),
        TokenSpec::Scoped(ScopedToken {
            name: "site-manager".into(),
            scope: ScopeName::SiteManager,
            carrier: None,
            sites: [SITE.parse().expect("site id")].into(),
        }),
    );
}

/// Waits until a cabinet is online with the 16 compartments of the test board (its hello is
/// in, so the parcel domain knows its layout).
pub async fn online(api: &ApiClient, id: &str) {
    eventually_async(&format!("{id} online"), || async {
        let (s, c) = api.get(&format!("/v1/cabinets/{id}")).await;
        (s == 200
            && c["online"] == json!(true)
            && c["compartments"].as_array().map(Vec::len) == Some(16))
        .then_some(())
    })
    .await;
}

/// Creates the site with `cabinets`, the carriers `dhl` and `ups` and one courier each,
/// through the operator API.
pub async fn setup(op: &ApiClient, cabinets: &[&str]) {
    for (id, name) in [("dhl", "DHL"), ("ups", "UPS")] {
        let (s, b) = op
            .put(&format!("/v1/carriers/{id}"), json!({"name": name}))
            .await;
        assert_eq!(s, 200, "{b}");
    }
    let (s, b) = op
        .put(
            &format!("/v1/sites/{SITE}"),
            json!({"name": "Test site", "time_zone": "Europe/Berlin",
                   "address": "Teststr. 1, Berlin", "cabinets": cabinets}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    for (carrier, courier, badge) in [("dhl", "dhl-c1", DHL_BADGE), ("ups", "ups-c1", UPS_BADGE)] {
        let (s, b) = op
            .put(
                &format!("/v1/carriers/{carrier}/couriers/{courier}"),
                json!({"name": courier, "badge": badge}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
    }
}

/// Creates an order with a carrier's client; returns its JSON.
pub async fn order(client: &ApiClient, tracking: &str, size: &str) -> Value {
    let (s, b) = client
        .post(
            "/v1/orders",
            json!({"site": SITE, "size": size, "tracking": tracking,
                   "recipient": {"phone": "+4915100000000", "language": "de"}}),
        )
        .await;
    assert_eq!(s, 201, "{b}");
    b
}

/// The state of an order as `client` sees it.
pub async fn state(client: &ApiClient, id: &str) -> String {
    let (s, b) = client.get(&format!("/v1/orders/{id}")).await;
    assert_eq!(s, 200, "{b}");
    b["state"].as_str().unwrap_or_default().to_owned()
}

/// Waits until the order is in `want`; returns its JSON.
pub async fn wait_state(client: &ApiClient, id: &str, want: &str) -> Value {
    eventually_async(&format!("order {id} {want}"), || async {
        let (_, b) = client.get(&format!("/v1/orders/{id}")).await;
        (b["state"] == want).then_some(b)
    })
    .await
}

/// The newest notification of an order (as the operator reads the outbox), with its codes.
pub async fn notice(op: &ApiClient, order: &str, kind: &str) -> Value {
    eventually_async(&format!("{kind} notice for {order}"), || async {
        let (_, b) = op.get("/v1/notifications?limit=1000").await;
        b["notifications"].as_array().and_then(|a| {
            a.iter()
                .rev()
                .find(|n| n["order"] == order && n["kind"] == kind)
                .cloned()
        })
    })
    .await
}

/// Waits until the cabinet holds the credential set the gateway last built for it.
pub async fn creds_current(api: &ApiClient, cab: &crate::agent::TestCabinet) {
    eventually_async(
        &format!("{} holds the current credential set", cab.id),
        || async {
            let (_, b) = api
                .get(&format!("/v1/cabinets/{}/compartments", cab.id))
                .await;
            let v = b["creds_version"].as_u64().unwrap_or(0);
            (v > 0 && cab.status().creds_version == v).then_some(())
        },
    )
    .await;
}

/// A courier's deposit through the order's remote unlock: waits for the door to open, puts the
/// parcel in, closes the door, and waits until the order is `ready`.
pub async fn remote_deposit(client: &ApiClient, cab: &crate::agent::TestCabinet, order: &Value) {
    let id = order["id"].as_str().expect("id");
    let c = order["compartment"].as_u64().expect("compartment") as u16;
    let (s, r) = client
        .post(
            &format!("/v1/orders/{id}/unlock"),
            json!({"reason": "courier at the door"}),
        )
        .await;
    assert!(s == 202 || s == 200, "{r}");
    crate::eventually("door open", || {
        cab.status()
            .open_doors
            .contains(&locker_schemas::CompartmentId(c))
    })
    .await;
    cab.board.put_parcel(usize::from(c - 1)).expect("parcel in");
    cab.board.close_door(usize::from(c - 1)).expect("close");
    wait_state(client, id, "ready").await;
}
