//! Resource limits of a process type (memory, CPU, number of processes), read from the app's
//! config knobs. Pure: the caller hands in the app's environment.

use std::collections::BTreeMap;

/// The limits of one process. `None` means unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Limits {
    pub memory_bytes: Option<u64>,
    /// Thousandths of a CPU core: 500 is half a core, 2000 two cores.
    pub cpu_millicores: Option<u32>,
    pub pids: Option<u64>,
}

impl Limits {
    /// Whether no limit is set at all.
    pub fn is_empty(&self) -> bool {
        *self == Limits::default()
    }
}

const MEMORY_KNOB: &str = "BERTH_MEMORY_LIMIT";
const CPU_KNOB: &str = "BERTH_CPU_LIMIT";
const PIDS_KNOB: &str = "BERTH_PIDS_LIMIT";

/// Below this a limit is almost certainly a plain number meant as megabytes (docker refuses
/// less than 6 MB for the same reason).
const MIN_MEMORY_BYTES: u64 = 4 << 20;
/// The kernel refuses a CFS quota under 1 ms per 100 ms period, which is 10 millicores.
const MIN_CPU_MILLICORES: u32 = 10;

/// The limits of `process_type` from the knobs in `env`:
///
/// - `BERTH_MEMORY_LIMIT`: bytes with an optional suffix K, M, G or T (powers of 1024, as in
///   docker's `-m` and systemd's `MemoryMax=`; `KB`, `Ki` and `KiB` mean the same), e.g. `512M`,
///   `1.5G`, `300000K`, `268435456`.
/// - `BERTH_CPU_LIMIT`: CPU cores, e.g. `0.5`, `2`, or millicores as in Kubernetes, `500m`.
/// - `BERTH_PIDS_LIMIT`: the number of processes and threads, e.g. `100`.
///
/// Each knob also exists per process type, with the type upper-cased and every character
/// other than an ASCII letter or digit turned into `_` as a suffix (`BERTH_MEMORY_LIMIT_WEB`,
/// `BERTH_CPU_LIMIT_MY_WORKER` for `my-worker`); that one wins over the general knob. The value
/// `unlimited` (or `max`, `none`) lifts a general limit for one type; an empty value counts
/// as not set. A value that is not understood is an error naming the knob, the value and an
/// example.
pub fn limits_for(env: &BTreeMap<String, String>, process_type: &str) -> Result<Limits, String> {
    let suffix = knob_suffix(process_type);
    Ok(Limits {
        memory_bytes: knob(env, MEMORY_KNOB, &suffix, parse_memory)?,
        cpu_millicores: knob(env, CPU_KNOB, &suffix, parse_cpu)?,
        pids: knob(env, PIDS_KNOB, &suffix, parse_pids)?,
    })
}

/// `my-worker` becomes `MY_WORKER`.
fn knob_suffix(process_type: &str) -> String {
    process_type
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_uppercase() } else { '_' })
        .collect()
}

/// The value of the per-type knob when set, else of the general one, parsed by `parse`, which
/// returns the reason and an example value when it does not understand the value.
fn knob<T>(
    env: &BTreeMap<String, String>,
    general: &str,
    suffix: &str,
    parse: fn(&str) -> Result<T, (String, &'static str)>,
) -> Result<Option<T>, String> {
    let specific = format!("{general}_{suffix}");
    let set = |name: &str| env.get(name).map(|v| v.trim()).filter(|v| !v.is_empty());
    let (name, value) = match (set(&specific), set(general)) {
        (Some(value), _) => (specific.as_str(), value),
        (None, Some(value)) => (general, value),
        (None, None) => return Ok(None),
    };
    if ["unlimited", "max", "none"].iter().any(|word| value.eq_ignore_ascii_case(word)) {
        return Ok(None);
    }
    parse(value)
        .map(Some)
        .map_err(|(reason, example)| format!("{name}={value}: {reason}; e.g. {name}={example}"))
}

fn parse_memory(value: &str) -> Result<u64, (String, &'static str)> {
    const EXAMPLE: &str = "512M";
    let bad = || ("not a memory size (bytes, or a number with K, M, G or T)".to_string(), EXAMPLE);
    let digits_end = value.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(value.len());
    let (number, unit) = value.split_at(digits_end);
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kb" | "ki" | "kib" => 10,
        "m" | "mb" | "mi" | "mib" => 20,
        "g" | "gb" | "gi" | "gib" => 30,
        "t" | "tb" | "ti" | "tib" => 40,
        _ => return Err(bad()),
    };
    let bytes = scaled(number, 1 << shift).ok_or_else(bad)?;
    if bytes < MIN_MEMORY_BYTES {
        return Err(("less than the least limit of 4M (a plain number is bytes)".into(), EXAMPLE));
    }
    Ok(bytes)
}

fn parse_cpu(value: &str) -> Result<u32, (String, &'static str)> {
    const EXAMPLE: &str = "0.5";
    let bad =
        || ("not a number of CPU cores (like 0.5 or 2) or millicores (like 500m)".into(), EXAMPLE);
    let millicores = match value.strip_suffix('m') {
        Some(millicores) => scaled(millicores, 1),
        None => {
            // More than three decimals would be finer than a millicore.
            if value.split_once('.').is_some_and(|(_, decimals)| decimals.len() > 3) {
                return Err(("more precise than a thousandth of a core".into(), EXAMPLE));
            }
            scaled(value, 1000)
        }
    };
    let millicores = millicores.and_then(|m| u32::try_from(m).ok()).ok_or_else(bad)?;
    if millicores < MIN_CPU_MILLICORES {
        return Err(("less than the least limit of 0.01 cores".into(), EXAMPLE));
    }
    Ok(millicores)
}

fn parse_pids(value: &str) -> Result<u64, (String, &'static str)> {
    const EXAMPLE: &str = "100";
    match value.parse::<u64>() {
        Ok(0) => Err(("a process needs at least 1".into(), EXAMPLE)),
        Ok(pids) => Ok(pids),
        Err(_) => Err(("not a whole number of processes".into(), EXAMPLE)),
    }
}

/// `number` (digits with at most one decimal point) times `unit`, rounded down, or `None` when
/// it is not such a number or does not fit in a u64. Integer arithmetic only, so `1.1G` is
/// exact.
fn scaled(number: &str, unit: u64) -> Option<u64> {
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let all_digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if whole.is_empty() && fraction.is_empty() || !all_digits(whole) || !all_digits(fraction) {
        return None;
    }
    let whole: u64 = if whole.is_empty() { 0 } else { whole.parse().ok()? };
    whole.checked_mul(unit)?.checked_add(fraction_times(fraction, unit)?)
}

/// `0.FRACTION * unit`, rounded down.
fn fraction_times(fraction: &str, unit: u64) -> Option<u64> {
    let mut numerator: u128 = 0;
    let mut denominator: u128 = 1;
    for digit in fraction.bytes() {
        // Past the 18th digit the rest adds less than unit / 10^18, under 1 for every unit
        // used here; stopping there keeps numerator * unit inside a u128.
        if denominator >= 10u128.pow(18) {
            break;
        }
        numerator = numerator * 10 + u128::from(digit - b'0');
        denominator *= 10;
    }
    u64::try_from(numerator * u128::from(unit) / denominator).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn memory_values() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("512M", Ok(512 << 20)),
            ("1G", Ok(1 << 30)),
            ("1g", Ok(1 << 30)),
            ("1GiB", Ok(1 << 30)),
            ("1GB", Ok(1 << 30)),
            ("1.5G", Ok(3 << 29)),
            ("300000K", Ok(300_000 << 10)),
            ("268435456", Ok(268_435_456)),
            ("268435456B", Ok(268_435_456)),
            (" 64M ", Ok(64 << 20)),
            ("2T", Ok(2 << 40)),
            ("512", Err("BERTH_MEMORY_LIMIT=512: less than the least limit of 4M")),
            ("0", Err("less than the least limit")),
            ("12X", Err("BERTH_MEMORY_LIMIT=12X: not a memory size")),
            ("M", Err("not a memory size")),
            ("-1G", Err("not a memory size")),
            ("1.2.3G", Err("not a memory size")),
            ("99999999999T", Err("not a memory size")),
        ];
        for (value, expected) in cases {
            let got = limits_for(&env(&[("BERTH_MEMORY_LIMIT", value)]), "web");
            check(value, got.map(|l| l.memory_bytes.unwrap()), expected, "BERTH_MEMORY_LIMIT=512M");
        }
    }

    #[test]
    fn cpu_values() {
        let cases: &[(&str, Result<u32, &str>)] = &[
            ("0.5", Ok(500)),
            ("2", Ok(2000)),
            ("1.25", Ok(1250)),
            (".5", Ok(500)),
            ("0.01", Ok(10)),
            ("250m", Ok(250)),
            ("0.005", Err("BERTH_CPU_LIMIT=0.005: less than the least limit of 0.01 cores")),
            ("0", Err("less than the least limit")),
            ("0.3333", Err("more precise than a thousandth of a core")),
            ("half", Err("BERTH_CPU_LIMIT=half: not a number of CPU cores")),
            ("5000000", Err("not a number of CPU cores")),
            ("1,5", Err("not a number of CPU cores")),
        ];
        for (value, expected) in cases {
            let got = limits_for(&env(&[("BERTH_CPU_LIMIT", value)]), "web");
            check(value, got.map(|l| l.cpu_millicores.unwrap()), expected, "BERTH_CPU_LIMIT=0.5");
        }
    }

    #[test]
    fn pids_values() {
        let cases: &[(&str, Result<u64, &str>)] = &[
            ("100", Ok(100)),
            ("1", Ok(1)),
            ("0", Err("BERTH_PIDS_LIMIT=0: a process needs at least 1")),
            ("1.5", Err("not a whole number")),
            ("-3", Err("not a whole number")),
            ("lots", Err("BERTH_PIDS_LIMIT=lots: not a whole number")),
        ];
        for (value, expected) in cases {
            let got = limits_for(&env(&[("BERTH_PIDS_LIMIT", value)]), "web");
            check(value, got.map(|l| l.pids.unwrap()), expected, "BERTH_PIDS_LIMIT=100");
        }
    }

    fn check<T: PartialEq + std::fmt::Debug>(
        value: &str,
        got: Result<T, String>,
        expected: &Result<T, &str>,
        example: &str,
    ) {
        match (got, expected) {
            (Ok(got), Ok(expected)) => assert_eq!(&got, expected, "value {value:?}"),
            (Err(message), Err(part)) => {
                assert!(message.contains(part), "value {value:?}: {message:?} lacks {part:?}");
                assert!(message.ends_with(&format!("e.g. {example}")), "{message:?}");
            }
            (got, expected) => panic!("value {value:?}: got {got:?}, expected {expected:?}"),
        }
    }

    #[test]
    fn per_type_knobs_win_over_general_ones() {
        let knobs = env(&[
            ("BERTH_MEMORY_LIMIT", "512M"),
            ("BERTH_MEMORY_LIMIT_WEB", "1G"),
            ("BERTH_CPU_LIMIT", "1"),
            ("BERTH_CPU_LIMIT_MY_WORKER", "0.25"),
            ("BERTH_PIDS_LIMIT_MY_WORKER", "unlimited"),
            ("BERTH_PIDS_LIMIT", "200"),
            ("BERTH_MEMORY_LIMIT_CLOCK", ""),
        ]);
        let cases: &[(&str, Limits)] = &[
            (
                "web",
                Limits { memory_bytes: Some(1 << 30), cpu_millicores: Some(1000), pids: Some(200) },
            ),
            (
                "my-worker",
                Limits { memory_bytes: Some(512 << 20), cpu_millicores: Some(250), pids: None },
            ),
            // An empty per-type knob is not set, so the general one applies.
            (
                "clock",
                Limits {
                    memory_bytes: Some(512 << 20),
                    cpu_millicores: Some(1000),
                    pids: Some(200),
                },
            ),
        ];
        for (process_type, expected) in cases {
            assert_eq!(limits_for(&knobs, process_type).as_ref(), Ok(expected), "{process_type}");
        }
    }

    #[test]
    fn no_knobs_no_limits() {
        let limits = limits_for(&env(&[("PATH", "/bin"), ("BERTH_MEMORY_LIMIT", " ")]), "web");
        assert_eq!(limits, Ok(Limits::default()));
        assert!(Limits::default().is_empty());
        assert!(!Limits { pids: Some(1), ..Limits::default() }.is_empty());
    }

    #[test]
    fn suffixes_of_process_types() {
        let cases = [("web", "WEB"), ("my-worker", "MY_WORKER"), ("a.b_c9", "A_B_C9"), ("é", "_")];
        for (process_type, expected) in cases {
            assert_eq!(knob_suffix(process_type), expected);
        }
    }

    #[test]
    fn errors_name_the_per_type_knob() {
        let knobs = env(&[("BERTH_MEMORY_LIMIT", "512M"), ("BERTH_MEMORY_LIMIT_WEB", "lots")]);
        assert_eq!(
            limits_for(&knobs, "web"),
            Err("BERTH_MEMORY_LIMIT_WEB=lots: not a memory size (bytes, or a number with K, M, \
                 G or T); e.g. BERTH_MEMORY_LIMIT_WEB=512M"
                .to_string())
        );
        // The general knob is fine for other types.
        assert!(limits_for(&knobs, "worker").is_ok());
    }
}
