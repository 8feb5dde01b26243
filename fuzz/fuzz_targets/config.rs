//! The controller's configuration: a TOML file layer applied and validated, and command
//! lines (one argument per line) through the same checks.
#![no_main]
use ippx_hub::cli::HubConfig;
use ippx_hub::settings;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    if let Ok(layer) = settings::parse_toml(text) {
        let mut cfg = HubConfig::default();
        if layer.apply(&mut cfg).is_ok() {
            let _ = cfg.validate();
        }
    }
    let args: Vec<String> = text.lines().take(32).map(str::to_owned).collect();
    let mut cfg = HubConfig::default();
    if ippx_hub::cli::parse_args(&mut cfg, &args).is_ok() {
        let _ = cfg.validate();
    }
});
