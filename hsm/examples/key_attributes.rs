//! Prints every secret key object on a token with the attributes the key-usage policy sets, read
//! back with raw cryptoki calls: what hsm/README.md shows for SoftHSM2.
//!
//! `cargo run -p posbridge-hsm --example key_attributes -- LIBRARY TOKEN_LABEL` with the user
//! PIN in `POSBRIDGE_HSM_PIN`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use posbridge_hsm::pkcs11::{Pkcs11Module, Pkcs11Options, UserPin};

fn main() {
    let mut args = std::env::args().skip(1);
    let (Some(module), Some(token_label)) = (args.next(), args.next()) else {
        eprintln!("usage: key_attributes LIBRARY TOKEN_LABEL (PIN in POSBRIDGE_HSM_PIN)");
        std::process::exit(2);
    };
    let options = Pkcs11Options {
        module: module.into(),
        token_label,
        slot: None,
        pool_size: 1,
    };
    let pin = UserPin::from_config(None, None).expect("POSBRIDGE_HSM_PIN");
    let token = Pkcs11Module::open(&options, &pin).expect("open the token");
    let (context, slot) = token.raw_context();
    let session = context.open_ro_session(slot).expect("C_OpenSession");
    let wanted = [
        AttributeType::Label,
        AttributeType::KeyType,
        AttributeType::Sensitive,
        AttributeType::Extractable,
        AttributeType::Modifiable,
        AttributeType::Copyable,
        AttributeType::Encrypt,
        AttributeType::Decrypt,
        AttributeType::Sign,
        AttributeType::Verify,
        AttributeType::Wrap,
        AttributeType::Unwrap,
        AttributeType::Derive,
        AttributeType::Id,
    ];
    let mut rows = Vec::new();
    for handle in session
        .find_objects(&[Attribute::Class(ObjectClass::SECRET_KEY)])
        .expect("C_FindObjects")
    {
        let mut label = String::new();
        let mut cells = Vec::new();
        for attribute in session
            .get_attributes(handle, &wanted)
            .expect("C_GetAttributeValue")
        {
            match attribute {
                Attribute::Label(bytes) => label = String::from_utf8_lossy(&bytes).into_owned(),
                Attribute::KeyType(kind) => cells.push(format!("{kind}")),
                Attribute::Id(bytes) => {
                    cells.push(format!("id={}", String::from_utf8_lossy(&bytes)))
                }
                other => {
                    let name = format!("{:?}", other.attribute_type());
                    let on = matches!(
                        other,
                        Attribute::Sensitive(true)
                            | Attribute::Extractable(true)
                            | Attribute::Modifiable(true)
                            | Attribute::Copyable(true)
                            | Attribute::Encrypt(true)
                            | Attribute::Decrypt(true)
                            | Attribute::Sign(true)
                            | Attribute::Verify(true)
                            | Attribute::Wrap(true)
                            | Attribute::Unwrap(true)
                            | Attribute::Derive(true)
                    );
                    cells.push(format!(
                        "{}{}",
                        if on { "+" } else { "-" },
                        name.to_lowercase()
                    ));
                }
            }
        }
        rows.push(format!("{label:<22} {}", cells.join(" ")));
    }
    rows.sort();
    for row in rows {
        println!("{row}");
    }
}
