//! Authentication and capabilities over real HTTP: login JWTs verified against a JWKS fetched
//! over HTTP, api-keys stored as hashes, and every way a credential must be refused.

use e2e::*;
use serde_json::Value;
use shared::auth::Capability;

fn sessions() -> String {
    gateway().url("/api/v1/sessions")
}

async fn status_for(token: &str) -> Reply {
    Client::default().get(&sessions(), token).await
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

#[tokio::test]
async fn missing_or_garbage_credentials_are_401() {
    let client = Client::default();
    client.send("GET", &sessions(), None, None).await.expect_error(401, "unauthorized");
    for token in ["garbage", "wgk_0000000000000000000000000000000000000000", "a.b.c", "...."] {
        status_for(token).await.expect_error(401, "unauthorized");
    }
    let basic = reqwest::Client::new().get(sessions()).header("authorization", "Basic dXNlcjpwYXNz").send().await.unwrap();
    assert_eq!(basic.status(), 401);
}

#[tokio::test]
async fn valid_login_jwts_are_accepted_rs256_and_es256() {
    let org = new_org();
    let client = Client::default();
    let owner = rs256(&claims(&org, "owner"));
    assert_eq!(status_for(&owner).await.status, 200);

    let admin = es256(&with(claims(&org, "admin"), "sub", "user-es".into()));
    let created = client.post(&sessions(), &admin, r#"{"label":"from a login"}"#).await;
    assert_eq!(created.status, 201, "{}", created.body);
    assert_eq!(created.body["createdByUserId"], "user-es");
    assert_eq!(created.body["organizationId"], org.as_str());
    let listed = client.get(&sessions(), &owner).await;
    assert_eq!(listed.body["data"][0]["id"], created.body["id"]);
}

#[tokio::test]
async fn forged_expired_or_misaddressed_jwts_are_401() {
    let org = new_org();
    let good = claims(&org, "owner");
    let refused = [
        ("expired", rs256(&with(good.clone(), "exp", (now() - 3600).into()))),
        ("not yet valid", rs256(&with(good.clone(), "nbf", (now() + 3600).into()))),
        ("wrong audience", rs256(&with(good.clone(), "aud", "someone-else".into()))),
        ("wrong issuer", rs256(&with(good.clone(), "iss", "https://evil.test".into()))),
        ("no expiry", rs256(&{
            let mut c = good.clone();
            c.as_object_mut().unwrap().remove("exp");
            c
        })),
        ("alg none", unsigned(&good)),
        ("HS256 signed with the RSA public key", hs256_with_public_key(&good)),
        ("signed by an unknown key under a known kid", rs256_by_attacker(&good)),
    ];
    for (case, token) in refused {
        let reply = status_for(&token).await;
        assert_eq!(reply.status, 401, "{case}: {}", reply.body);
        reply.expect_error(401, "unauthorized");
    }
    assert_eq!(status_for(&rs256(&good)).await.status, 200, "the same claims, properly signed, pass");
}

#[tokio::test]
async fn revoked_api_keys_are_401() {
    let org = new_org();
    let (key, id) = api_key(&org, &[Capability::Manage]).await;
    assert_eq!(status_for(&key).await.status, 200);
    let redis = shared::redis::native::connect(&redis_url()).await.unwrap();
    assert!(shared::apikey::revoke(&redis, &org, &id).await.unwrap());
    status_for(&key).await.expect_error(401, "unauthorized");
}

#[tokio::test]
async fn callers_without_manage_are_403() {
    let org = new_org();
    let (send_read, _) = api_key(&org, &[Capability::Send, Capability::Read]).await;
    let details = status_for(&send_read).await.expect_error(403, "forbidden").clone();
    assert_eq!(details["capability"], "manage");
    for role in ["member", "viewer", "nobody-knows-this-role"] {
        status_for(&rs256(&claims(&org, role))).await.expect_error(403, "forbidden");
    }
    let no_org = {
        let mut c = claims(&org, "owner");
        c.as_object_mut().unwrap().remove("org_id");
        c
    };
    status_for(&rs256(&no_org)).await.expect_error(403, "forbidden");
    let member = rs256(&claims(&org, "member"));
    Client::default().post(&sessions(), &member, "{}").await.expect_error(403, "forbidden");
}

#[tokio::test]
async fn rotated_keys_are_refetched_at_most_once_per_interval() {
    let jwks = JwksServer::start();
    let gateway = Gateway::start(
        &redis_url(),
        &[("jwt_issuer", ISSUER), ("jwt_audience", AUDIENCE), ("jwks_url", &jwks.url), ("jwks_refetch_secs", "3600"), ("jwks_allow_http", "true")],
    );
    let client = Client::default();
    let list = gateway.url("/api/v1/sessions");
    let org = new_org();
    assert_eq!(client.get(&list, &rs256(&claims(&org, "owner"))).await.status, 200);
    assert_eq!(client.get(&list, &rs256(&claims(&org, "owner"))).await.status, 200);
    let fetches = |j: &JwksServer| j.fetches.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(fetches(&jwks), 1, "the JWKS is cached in Redis");

    // The issuer rotates: the same key now also appears under a new kid.
    let mut document: Value = serde_json::from_str(&jwks.document.lock().unwrap()).unwrap();
    let mut rotated = document["keys"][0].clone();
    rotated["kid"] = "rsa-2".into();
    document["keys"].as_array_mut().unwrap().push(rotated);
    *jwks.document.lock().unwrap() = document.to_string();

    assert_eq!(client.get(&list, &sign_with_kid("rsa-2", &claims(&org, "owner"))).await.status, 200);
    assert_eq!(fetches(&jwks), 2, "an unknown kid refetched the JWKS once");
    for _ in 0..3 {
        client.get(&list, &sign_with_kid("rsa-9", &claims(&org, "owner"))).await.expect_error(401, "unauthorized");
    }
    assert_eq!(fetches(&jwks), 2, "further unknown kids wait for the refetch interval");
}

#[tokio::test]
async fn operator_cli_creates_and_revokes_api_keys() {
    let org = new_org();
    let xtask = |args: &[&str]| {
        let out = std::process::Command::new(root().join("target/release/xtask"))
            .arg("apikey")
            .args(args)
            .env("REDIS_URL", redis_url())
            .output()
            .expect("xtask binary (built by `cargo xtask test`)");
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let created = xtask(&["create", "--org", &org, "--perm", "manage,read", "--label", "ci"]);
    let field = |name: &str| created.lines().find_map(|l| l.strip_prefix(name)).unwrap().trim().to_owned();
    let (id, key) = (field("id:"), field("key:"));
    assert!(key.starts_with("wgk_"));
    assert_eq!(status_for(&key).await.status, 200);

    let listed = xtask(&["list", "--org", &org]);
    assert!(listed.contains(&id) && !listed.contains(&key), "listing shows ids, never keys");
    let stored = redis::Client::open(redis_url()).unwrap().get_multiplexed_async_connection().await.unwrap();
    let mut stored = stored;
    let raw: Option<String> = redis::cmd("GET").arg(shared::keys::api_key(&key)).query_async(&mut stored).await.unwrap();
    assert!(raw.is_none(), "no record is stored under the key itself");

    xtask(&["revoke", "--org", &org, "--id", &id]);
    status_for(&key).await.expect_error(401, "unauthorized");
}

#[tokio::test]
async fn an_inline_jwks_needs_no_endpoint() {
    let document = std::fs::read_to_string(root().join("tests/fixtures/jwks.json")).unwrap();
    let gateway = Gateway::start(&redis_url(), &[("jwt_issuer", ISSUER), ("jwt_audience", AUDIENCE), ("jwks", &document)]);
    let client = Client::default();
    let list = gateway.url("/api/v1/sessions");
    let org = new_org();
    assert_eq!(client.get(&list, &es256(&claims(&org, "owner"))).await.status, 200);
    client.get(&list, &rs256_by_attacker(&claims(&org, "owner"))).await.expect_error(401, "unauthorized");
    client.get(&list, &rs256(&claims(&org, "member"))).await.expect_error(403, "forbidden");
}

#[tokio::test]
async fn login_jwts_are_refused_where_none_are_configured() {
    let gateway = Gateway::start(&redis_url(), &[]);
    let reply = Client::default().get(&gateway.url("/api/v1/sessions"), &rs256(&claims(&new_org(), "owner"))).await;
    reply.expect_error(401, "unauthorized");
}
