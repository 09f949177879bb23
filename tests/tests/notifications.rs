//! Recipient notifications end to end: a parcel deposited at a real cabinet makes the parcel
//! domain queue a notice; the gateway's outbox renders it in the recipient's language and
//! delivers it to a real HTTP SMS provider started by the test, retrying while the provider
//! fails, and keeping a notice its provider refuses for good as a dead letter the operator
//! can list and replay. (E-mail over SMTP with STARTTLS against a real aiosmtpd is tested in
//! gateway/tests/notify.rs.)

use locker_gateway::outbound::notify::NotifyConfig;
use locker_tests::agent::TestCabinet;
use locker_tests::gateway::TestGateway;
use locker_tests::hooks::{Mode, Receiver};
use locker_tests::parcels::{self, DHL_TOKEN, UPS_TOKEN};
use locker_tests::pki::TestPki;
use locker_tests::{eventually, eventually_async};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_get_their_code_through_the_provider_with_retries_and_dead_letters() {
    let (sms, refusing) = (Receiver::start().await, Receiver::start().await);
    sms.set(Mode::Status(503));
    refusing.set(Mode::Status(400));
    let mut pki = TestPki::new();
    let notifications: NotifyConfig = toml::from_str(&format!(
        r#"
        enabled = true
        qr_link = "https://lockers.test/qr/{{{{ qr }}}}"
        [channels]
        sms = "local-sms"
        [providers.local-sms]
        kind = "http"
        url = "{}"
        headers = {{ "x-api-key" = "sms-key" }}
        body = '{{"to": {{{{ to }}}}, "text": {{{{ text }}}}, "order": {{{{ order }}}}}}'
        [providers.strict-sms]
        kind = "http"
        url = "{}"
        body = '{{"to": {{{{ to }}}}, "text": {{{{ text }}}}}}'
        [[routes]]
        carrier = "ups"
        sms = "strict-sms"
        "#,
        sms.url("/sms"),
        refusing.url("/sms")
    ))
    .expect("notifications config");
    let gw = TestGateway::start_with(&pki, |cfg| {
        parcels::tokens(cfg);
        cfg.webhooks.poll_ms = 20;
        cfg.webhooks.retry_base_ms = 50;
        cfg.webhooks.retry_max_ms = 200;
        cfg.notifications = notifications;
    })
    .await;
    let cab = TestCabinet::start(&mut pki, "CAB-NT1", gw.edge_addr()).await;
    parcels::online(&gw.api, "CAB-NT1").await;
    parcels::setup(&gw.api, &["CAB-NT1"]).await;
    let (dhl, ups) = (gw.api.with_token(DHL_TOKEN), gw.api.with_token(UPS_TOKEN));

    // a DHL parcel: the provider fails first, then takes the message
    let o = parcels::order(&dhl, "JJD-NT-1", "S").await;
    let id = o["id"].as_str().expect("id").to_owned();
    parcels::remote_deposit(&dhl, &cab, &o).await;
    let notice = parcels::notice(&gw.api, &id, "ready").await;
    let pin = notice["pin"].as_str().expect("pin").to_owned();
    eventually_async("the provider failed at least once", || async {
        let (_, t) = gw.api.get("/v1/outbound/targets").await;
        t["targets"]
            .as_array()?
            .iter()
            .find(|t| t["target"] == "notify:local-sms")
            .filter(|t| t["health"]["failed_attempts"].as_u64().unwrap_or(0) >= 1)
            .map(|_| ())
    })
    .await;
    sms.set(Mode::Up);
    eventually("the SMS", || !sms.hooks().is_empty()).await;
    let got = sms.hooks();
    assert_eq!(got.len(), 1, "one notice, one message");
    assert_eq!(got[0].headers["x-api-key"], "sms-key");
    let body = got[0].json();
    assert_eq!(body["to"], "+4915100000000");
    assert_eq!(body["order"], id.as_str());
    let text = body["text"].as_str().expect("text");
    // the recipient's language (de), the code, the QR link, the site's address
    assert!(text.contains(&pin), "{text}");
    assert!(text.contains("https://lockers.test/qr/"), "{text}");
    assert!(text.contains("Teststr. 1"), "{text}");
    assert!(
        text.contains("Abhol") || text.contains("abhol"),
        "German text: {text}"
    );
    assert!(
        gw.api
            .metric("locker_outbound_retried_total{target=\"notify:local-sms\"}")
            .await
            >= 1.0
    );
    assert!(
        gw.api
            .metric("locker_outbound_delivered_total{target=\"notify:local-sms\"}")
            .await
            >= 1.0
    );

    // a UPS parcel: its route's provider refuses (400): a dead letter, at once
    let o = parcels::order(&ups, "1Z-NT-2", "S").await;
    let ups_id = o["id"].as_str().expect("id").to_owned();
    parcels::remote_deposit(&ups, &cab, &o).await;
    let letters = eventually_async("a dead letter", || async {
        let (s, d) = gw
            .api
            .get("/v1/outbound/targets/notify:strict-sms/dead-letters")
            .await;
        (s == 200 && !d["dead_letters"].as_array()?.is_empty()).then_some(d)
    })
    .await;
    let letter = &letters["dead_letters"][0];
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("400"),
        "{letter}"
    );
    assert_eq!(letter["entry"]["payload"]["order"], ups_id.as_str());
    assert!(refusing.hooks().is_empty());
    // a carrier cannot read the providers' dead letters
    let (s, _) = ups
        .get("/v1/outbound/targets/notify:strict-sms/dead-letters")
        .await;
    assert_eq!(s, 404);
    // fixed at the provider: replayed and delivered
    refusing.set(Mode::Up);
    let (s, r) = gw
        .api
        .post(
            "/v1/outbound/targets/notify:strict-sms/dead-letters/replay",
            json!({}),
        )
        .await;
    assert_eq!(s, 202, "{r}");
    assert_eq!(r["replayed"], 1);
    eventually("the replayed SMS", || !refusing.hooks().is_empty()).await;
    assert!(refusing.hooks()[0].json()["text"]
        .as_str()
        .unwrap_or_default()
        .contains(
            parcels::notice(&gw.api, &ups_id, "ready").await["pin"]
                .as_str()
                .expect("pin")
        ));

    // a message waiting for a provider that is then removed from the configuration: after
    // the restart it is a dead letter with the message it would have sent
    refusing.set(Mode::Status(503));
    let o = parcels::order(&ups, "1Z-NT-3", "S").await;
    let third = o["id"].as_str().expect("id").to_owned();
    parcels::remote_deposit(&ups, &cab, &o).await;
    eventually_async("the third message waits", || async {
        let (_, t) = gw.api.get("/v1/outbound/targets").await;
        t["targets"]
            .as_array()?
            .iter()
            .find(|t| t["target"] == "notify:strict-sms")
            .filter(|t| t["health"]["pending"].as_u64().unwrap_or(0) >= 1)
            .map(|_| ())
    })
    .await;
    let mut stopped = gw.stop().await;
    stopped.config.notifications.providers.remove("strict-sms");
    stopped.config.notifications.routes.clear();
    let gw = stopped.start().await;
    let letter = eventually_async("the orphaned message is a dead letter", || async {
        let (_, d) = gw
            .api
            .get("/v1/outbound/targets/notify:strict-sms/dead-letters?limit=1000")
            .await;
        d["dead_letters"]
            .as_array()?
            .iter()
            .find(|l| l["entry"]["payload"]["order"] == third.as_str())
            .cloned()
    })
    .await;
    assert!(
        letter["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("no longer configured"),
        "{letter}"
    );
    assert!(
        letter["entry"]["payload"]["body"]
            .as_str()
            .is_some_and(|b| !b.is_empty()),
        "the message is kept whole: {letter}"
    );
    drop(cab);
}
