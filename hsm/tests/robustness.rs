//! Bad input never panics: arbitrary strings as PINs, PANs, keys and labels, arbitrary bytes as
//! PIN blocks, cryptograms and messages give errors or results, nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use posbridge_hsm::{
    ClearKey, KeyType, MacAlgorithm, Padding, Pan, Pin, PinBlock, PinBlockFormat, SecurityModule,
    calculator,
};
use proptest::prelude::*;

const FORMATS: [PinBlockFormat; 4] = [
    PinBlockFormat::Iso0,
    PinBlockFormat::Iso1,
    PinBlockFormat::Iso3,
    PinBlockFormat::Iso4,
];

const ALGORITHMS: [MacAlgorithm; 5] = [
    MacAlgorithm::Iso9797Alg1 {
        padding: Padding::M1,
    },
    MacAlgorithm::Iso9797Alg1 {
        padding: Padding::M2,
    },
    MacAlgorithm::X919,
    MacAlgorithm::CupsEcb,
    MacAlgorithm::AesCmac,
];

proptest! {
    #[test]
    fn text_inputs_never_panic(text in ".{0,40}", digits in "[0-9]{0,25}") {
        let _ = Pan::new(&text);
        let _ = Pin::new(&text);
        let _ = ClearKey::from_hex(&text);
        let _ = PinBlock::from_hex(&text);
        let _ = text.parse::<PinBlockFormat>();
        let _ = text.parse::<MacAlgorithm>();
        let _ = text.parse::<KeyType>();
        let _ = posbridge_hsm::keys::check_label(&text);
        if let (Ok(pan), Ok(pin)) = (Pan::new(&digits), Pin::new(&digits[..digits.len().min(12)])) {
            let _ = pan.masked();
            for format in FORMATS {
                let _ = calculator::clear_pin_block(format, &pin, &pan);
            }
        }
    }

    #[test]
    fn arbitrary_blocks_and_messages_never_panic(
        block in proptest::collection::vec(any::<u8>(), 0..40),
        message in proptest::collection::vec(any::<u8>(), 0..100),
        pan in "[0-9]{8,19}",
        label_pick in 0usize..6,
    ) {
        let module = common::software();
        let labels = ["zpk/vec", "zpk/b", "pek/iso4", "tak/single", "qr/rfc4493", "no/such"];
        let label = labels[label_pick];
        let pan = Pan::new(&pan).unwrap();
        if let Ok(block) = PinBlock::from_slice(&block) {
            for src in FORMATS {
                for dst in FORMATS {
                    let _ = module.translate_pin(&block, label, src, "zpk/a", dst, Some(&pan));
                    let _ = module.verify_pin(&block, label, src, &pan, "pvk/vec", 1, "1234");
                }
            }
        }
        for algorithm in ALGORITHMS {
            let _ = module.generate_mac(label, algorithm, &message);
            let _ = module.verify_mac(label, algorithm, &message, &block);
        }
        for kind in KeyType::ALL {
            let _ = module.import_key(label, "zpk/imported", kind, &block, &message);
        }
    }
}
