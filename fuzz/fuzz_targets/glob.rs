#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    (batchmill_fuzzing::target("glob").run)(data);
});
