//! `POST /api/v1/webhooks`: registers an endpoint (201). The answer carries its signing secret,
//! the only time it is shown. It receives the events logged from now on.

use shared::answer::Answer;
use shared::config;
use shared::spin::{Context, SpinVariables};
use shared::webhook::{self, Settings};
use shared::ApiError;

pub async fn apply(ctx: &Context, org: &str, body: &[u8]) -> Result<Answer, ApiError> {
    let settings = Settings::for_create(body, config::webhook_allow_private(&SpinVariables).await)?;
    let max = config::max_webhooks_per_org(&SpinVariables).await;
    Ok(Answer::created(&webhook::create(&ctx.redis, org, &settings, max).await?))
}
