// Shared by the fuzz targets: the masking rules, compiled once.
use modelgate::mask::detect::{Detector, BUILTIN};
use modelgate::mask::replace::Style;
use modelgate::mask::stream::MaskRules;
use std::sync::{Arc, OnceLock};

pub fn rules() -> Arc<MaskRules> {
    static RULES: OnceLock<Arc<MaskRules>> = OnceLock::new();
    RULES
        .get_or_init(|| {
            let custom = vec![("EMPLOYEE_ID".to_string(), "EMP-[0-9]{6}".to_string())];
            let detector = Arc::new(Detector::new(&BUILTIN, &custom).unwrap());
            // A small holdback on purpose: the overflow path gets fuzzed too.
            Arc::new(MaskRules::uniform(detector, Style::Partial, 4096))
        })
        .clone()
}
