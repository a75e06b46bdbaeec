//! Showing a decoded payload to a person (one line per data object, with its EMVCo name) or to a
//! program (JSON: IDs as keys in payload order, templates as nested objects, values as strings).

use posbridge_codecs::emv_qr::{self, Field, Id, Payload, Value};

/// One line per data object, templates' sub-fields indented under them, the CRC last. Sub-fields
/// of posbridge's merchant account, order and signature templates get posbridge's names when the
/// template carries `gui`.
pub fn lines(payload: &Payload, gui: &str) -> Vec<String> {
    let mut out = Vec::new();
    for field in payload.fields() {
        match &field.value {
            Value::Text(text) => {
                let name = emv_qr::name(None, field.id);
                out.push(format!(
                    "{} {name}: {text}{}",
                    field.id,
                    note(payload, field.id, text)
                ));
            }
            Value::Template(children) => {
                let ours = is_posbridge_template(field, gui);
                let role = match field.id {
                    _ if !ours => "",
                    emv_qr::ORDER_TEMPLATE => " (posbridge order)",
                    emv_qr::SIGNATURE_TEMPLATE => " (posbridge signature)",
                    _ => " (posbridge)",
                };
                out.push(format!(
                    "{} {}{role}",
                    field.id,
                    emv_qr::name(None, field.id)
                ));
                template_lines(&mut out, &field.id.to_string(), field.id, children, ours);
            }
        }
    }
    out.push(format!(
        "{} {}: {}",
        Id::CRC,
        emv_qr::name(None, Id::CRC),
        payload.crc_hex()
    ));
    out
}

fn template_lines(out: &mut Vec<String>, path: &str, parent: Id, fields: &[Field], ours: bool) {
    for field in fields {
        let this = format!("{path}.{}", field.id);
        let indent = "  ".repeat(this.matches('.').count());
        let name = match (ours, emv_qr::posbridge_name(parent, field.id)) {
            (true, Some(name)) => name,
            // Below the first level every sub-field is payment-system specific.
            _ if path.contains('.') => "Payment system specific",
            _ => emv_qr::name(Some(parent), field.id),
        };
        match &field.value {
            Value::Text(text) => out.push(format!("{indent}{this} {name}: {text}")),
            Value::Template(children) => {
                out.push(format!("{indent}{this} {name}"));
                template_lines(out, &this, field.id, children, false);
            }
        }
    }
}

fn is_posbridge_template(field: &Field, gui: &str) -> bool {
    let template = matches!(field.id.value(), 26..=51)
        || field.id == emv_qr::ORDER_TEMPLATE
        || field.id == emv_qr::SIGNATURE_TEMPLATE;
    let carries_gui = field
        .value
        .as_template()
        .and_then(|fields| emv_qr::find_text(fields, Id::GUI))
        .is_some_and(|found| found.eq_ignore_ascii_case(gui));
    template && carries_gui
}

/// A short reading aid after some values: static/dynamic, the currency's letters, the amount in
/// minor units.
fn note(payload: &Payload, id: Id, text: &str) -> String {
    match id {
        Id::POINT_OF_INITIATION => match text {
            "11" => " (static)".into(),
            "12" => " (dynamic)".into(),
            _ => String::new(),
        },
        Id::CURRENCY => payload
            .currency()
            .and_then(emv_qr::currency)
            .map(|currency| format!(" ({})", currency.alpha))
            .unwrap_or_default(),
        Id::AMOUNT => match payload.amount_minor() {
            Ok(Some(minor)) => format!(" ({minor} minor units)"),
            Ok(None) => String::new(),
            Err(error) => format!(" ({error})"),
        },
        _ => String::new(),
    }
}

/// The payload as pretty-printed JSON (see [`Payload`]'s `Serialize`).
pub fn json(payload: &Payload) -> Result<String, serde_json::Error> {
    serde_json::to_string_pretty(payload)
}
