//! Turning a payload into a QR code a phone can scan: PNG, SVG, and text for a terminal window
//! (Unicode half blocks, or plain ASCII where a terminal has no Unicode).
//!
//! The payload is encoded in byte mode as its UTF-8 bytes with error correction level M, no ECI
//! designator, and the 4-module quiet zone ISO/IEC 18004 asks for, so an ordinary decoder
//! returns exactly the payload's bytes.

use qrcode::render::svg;
use qrcode::render::unicode::Dense1x2;
use qrcode::{Color, EcLevel, QrCode};

use super::png;

/// Modules of blank margin around the code (ISO/IEC 18004 quiet zone).
pub const QUIET_ZONE_MODULES: u32 = 4;
/// Default pixels per module in a PNG: 8 px keeps a typical payload's code about 500 px wide.
pub const DEFAULT_MODULE_PX: u32 = 8;
/// The largest module size accepted, so an image stays a few megabytes at most.
pub const MAX_MODULE_PX: u32 = 64;

/// Why a payload could not be rendered.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RenderError {
    /// The payload does not fit a QR code at error correction level M.
    #[error("payload does not fit in a QR code: {0}")]
    Encode(#[from] qrcode::types::QrError),
    /// The requested module size is outside 1 to [`MAX_MODULE_PX`].
    #[error("module size must be 1 to {MAX_MODULE_PX} pixels, got {0}")]
    ModuleSize(u32),
}

/// Which terminal colours the code is drawn for.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Background {
    /// Light text on a dark background (most terminals): light modules are drawn.
    #[default]
    Dark,
    /// Dark text on a light background: dark modules are drawn.
    Light,
}

/// The QR code for `payload`.
pub fn encode(payload: &str) -> Result<QrCode, RenderError> {
    Ok(QrCode::with_error_correction_level(
        payload.as_bytes(),
        EcLevel::M,
    )?)
}

/// A PNG image of the code, `module_px` pixels per module, black on white, with quiet zone.
pub fn png(payload: &str, module_px: u32) -> Result<Vec<u8>, RenderError> {
    if module_px == 0 || module_px > MAX_MODULE_PX {
        return Err(RenderError::ModuleSize(module_px));
    }
    let code = encode(payload)?;
    let modules = code.width();
    let colors = code.to_colors();
    let modules_u32 = u32::try_from(modules).unwrap_or(u32::MAX);
    let side_modules = modules_u32 + 2 * QUIET_ZONE_MODULES;
    let side_px = side_modules * module_px;
    let is_white = |x: u32, y: u32| {
        let (mx, my) = (x / module_px, y / module_px);
        if mx < QUIET_ZONE_MODULES || my < QUIET_ZONE_MODULES {
            return true;
        }
        let (cx, cy) = (
            (mx - QUIET_ZONE_MODULES) as usize,
            (my - QUIET_ZONE_MODULES) as usize,
        );
        if cx >= modules || cy >= modules {
            return true;
        }
        colors.get(cy * modules + cx) != Some(&Color::Dark)
    };
    Ok(png::encode_bilevel(side_px, side_px, is_white))
}

/// An SVG image of the code, black on white, with quiet zone.
pub fn svg(payload: &str) -> Result<String, RenderError> {
    let code = encode(payload)?;
    Ok(code
        .render()
        .min_dimensions(256, 256)
        .dark_color(svg::Color("#000000"))
        .light_color(svg::Color("#ffffff"))
        .quiet_zone(true)
        .build())
}

/// The code as Unicode half blocks (two modules per character cell, one per column), for a
/// terminal with the given background.
pub fn terminal(payload: &str, background: Background) -> Result<String, RenderError> {
    let code = encode(payload)?;
    let mut renderer = code.render::<Dense1x2>();
    renderer.quiet_zone(true);
    if background == Background::Dark {
        renderer
            .dark_color(Dense1x2::Light)
            .light_color(Dense1x2::Dark);
    }
    Ok(renderer.build())
}

/// The code in plain ASCII, two characters per module ("##" drawn, "  " not), for terminals
/// without Unicode.
pub fn ascii(payload: &str, background: Background) -> Result<String, RenderError> {
    let code = encode(payload)?;
    // On a dark background the light modules are the ones drawn.
    let (dark_module, light_module) = match background {
        Background::Dark => (' ', '#'),
        Background::Light => ('#', ' '),
    };
    Ok(code
        .render::<char>()
        .quiet_zone(true)
        .module_dimensions(2, 1)
        .dark_color(dark_module)
        .light_color(light_module)
        .build())
}
