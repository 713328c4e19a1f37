//! The pairing QR as a picture a page can show or a phone can scan from a screen: PNG or SVG,
//! rendered with the `qrcode` crate, asked for with `?format=png|svg|json` or the `Accept`
//! header (the JSON answer stays the default).

use qrcode::QrCode;
use shared::answer::Answer;
use shared::ApiError;

/// Pixels per QR module in the PNG, and the quiet zone around the code (the standard's 4).
const SCALE: usize = 8;
const QUIET: usize = 4;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Json,
    Png,
    Svg,
}

/// `?format=` wins; else the first image type the `Accept` header names; else JSON.
pub fn format(query: Option<&str>, accept: Option<&str>) -> Result<Format, ApiError> {
    let params = shared::validate::query_params(query, &["format"])?;
    if let Some((_, format)) = params.first() {
        return match format.as_str() {
            "json" => Ok(Format::Json),
            "png" => Ok(Format::Png),
            "svg" => Ok(Format::Svg),
            _ => Err(ApiError::invalid_field("format", "must be json, png or svg")),
        };
    }
    let wanted = accept.unwrap_or_default().split(',').map(|t| t.split(';').next().unwrap_or_default().trim().to_ascii_lowercase());
    for media_type in wanted {
        match media_type.as_str() {
            "application/json" => return Ok(Format::Json),
            "image/png" => return Ok(Format::Png),
            "image/svg+xml" => return Ok(Format::Svg),
            _ => {}
        }
    }
    Ok(Format::Json)
}

/// The code drawn as `format` asks (never cached: codes rotate every 20 s or so).
pub fn render(code: &str, format: Format) -> Result<Answer, ApiError> {
    let (content_type, body) = match format {
        Format::Svg => ("image/svg+xml", svg(code)?.into_bytes()),
        _ => ("image/png", png(&encode(code)?)?),
    };
    Ok(Answer::File { content_type: content_type.to_owned(), body, max_age_secs: 0 })
}

fn encode(code: &str) -> Result<QrCode, ApiError> {
    QrCode::new(code.as_bytes()).map_err(|e| ApiError::internal(format!("cannot draw the QR code: {e}")))
}

/// The code as an SVG document, at least 320 px square with its quiet zone.
pub fn svg(code: &str) -> Result<String, ApiError> {
    Ok(encode(code)?.render::<qrcode::render::svg::Color>().min_dimensions(320, 320).quiet_zone(true).build())
}

/// A grayscale PNG: black modules on white, `SCALE` pixels each, inside the quiet zone.
fn png(qr: &QrCode) -> Result<Vec<u8>, ApiError> {
    let modules = qr.width();
    let side = (modules + 2 * QUIET) * SCALE;
    let colors = qr.to_colors();
    let mut pixels = vec![255u8; side * side];
    for (i, color) in colors.iter().enumerate() {
        if *color == qrcode::Color::Dark {
            let (mx, my) = (i % modules + QUIET, i / modules + QUIET);
            for y in my * SCALE..(my + 1) * SCALE {
                pixels[y * side + mx * SCALE..y * side + (mx + 1) * SCALE].fill(0);
            }
        }
    }
    let failed = |e: png::EncodingError| ApiError::internal(format!("cannot encode the QR image: {e}"));
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, side as u32, side as u32);
    encoder.set_color(png::ColorType::Grayscale);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().map_err(failed)?;
    writer.write_image_data(&pixels).map_err(failed)?;
    writer.finish().map_err(failed)?;
    Ok(out)
}
