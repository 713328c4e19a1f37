//! `cargo xtask quota set --org ORG --quota NAME --value N` (0: no limit), `cargo xtask quota
//! unset --org ORG --quota NAME` (back to the deployment's default), `cargo xtask quota show
//! --org ORG`: an organization's overrides of the deployment's quotas (`shared::quota`).

use crate::Result;
use crate::apikey::required;

pub async fn run(args: &[String]) -> Result {
    let redis = shared::redis::native::connect(&crate::prereq::redis_url()).await?;
    let org = required(args, "--org")?;
    if !shared::validate::is_safe_id(&org) {
        return Err("--org takes letters, digits, '-' and '_' (at most 64)".into());
    }
    let quota = || required(args, "--quota");
    match args.first().map(String::as_str) {
        Some("set") => {
            let value = required(args, "--value")?.parse::<u64>().map_err(|_| "--value takes a whole number (0: no limit)")?;
            shared::quota::set(&redis, &org, &quota()?, Some(value)).await?;
        }
        Some("unset") => shared::quota::set(&redis, &org, &quota()?, None).await?,
        Some("show") => {
            for (name, value) in shared::quota::overrides(&redis, &org).await? {
                println!("{name} = {value}");
            }
        }
        _ => return Err(format!("usage: cargo xtask quota set|unset|show --org ORG [--quota {:?} --value N]", shared::quota::QUOTAS).into()),
    }
    Ok(())
}
