//! `cargo xtask apikey create --org ORG --perm manage,send,read [--label TEXT]`,
//! `cargo xtask apikey list --org ORG`, `cargo xtask apikey revoke --org ORG --id KEY_ID`.

use crate::Result;
use shared::auth::Capability;

pub fn flag(args: &[String], name: &str) -> Option<String> {
    args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned()
}

pub fn required(args: &[String], name: &str) -> Result<String> {
    flag(args, name).ok_or_else(|| format!("{name} is required").into())
}

pub async fn run(args: &[String]) -> Result {
    let redis = shared::redis::native::connect(&crate::prereq::redis_url()).await?;
    let org = required(args, "--org")?;
    if !shared::validate::is_safe_id(&org) {
        return Err("--org takes letters, digits, '-' and '_' (at most 64)".into());
    }
    match args.first().map(String::as_str) {
        Some("create") => {
            let perms = required(args, "--perm")?
                .split(',')
                .map(|p| Capability::parse(p.trim()).ok_or_else(|| format!("unknown permission {p:?}; use manage, send, read")))
                .collect::<std::result::Result<Vec<_>, _>>()?;
            let key = shared::apikey::mint();
            let record = shared::apikey::create(&redis, &key, &org, perms, flag(args, "--label")).await?;
            println!("id:  {}", record.id);
            println!("key: {key}");
            eprintln!("(the key is shown only now; the gateway stores only its hash)");
        }
        Some("list") => {
            for key in shared::apikey::list(&redis, &org).await? {
                println!("{}", serde_json::to_string(&key)?);
            }
        }
        Some("revoke") => {
            let id = required(args, "--id")?;
            if !shared::apikey::revoke(&redis, &org, &id).await? {
                return Err(format!("organization {org} has no api-key {id}").into());
            }
            println!("revoked {id}");
        }
        _ => return Err("usage: cargo xtask apikey create|list|revoke --org ORG ...".into()),
    }
    Ok(())
}
