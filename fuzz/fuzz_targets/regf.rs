//! Reading arbitrary bytes as a Windows registry hive (base block, nk/lf/lh/li/ri/vk/db cells)
//! and looking up the keys and values inspection asks for must succeed or fail cleanly.
#![no_main]

use ims::inspect::regf::Hive;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut src: &[u8] = data;
    let Ok(mut hive) = Hive::open(&mut src) else {
        return;
    };
    for path in [
        r"Microsoft\Windows NT\CurrentVersion",
        r"ControlSet001\Control\ComputerName\ComputerName",
        "Select",
        "",
    ] {
        if let Ok(Some(key)) = hive.key(path) {
            for name in [
                "ProductName",
                "CurrentBuildNumber",
                "CurrentMajorVersionNumber",
                "Current",
                "",
            ] {
                let _ = hive.value(&key, name);
            }
        }
    }
});
