//! Where computation runs: one type for the merge engine (`--device` of the merge tools), the
//! RL trainer and the evaluation. Written `auto`, `cpu`, `cuda` or `cuda:N` on the command line,
//! in config files and in `run.json` (serde reads and writes the same string).

use std::fmt;
use std::str::FromStr;

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Device {
    /// A GPU when this build can use one and one is found, else the CPU.
    #[default]
    Auto,
    Cpu,
    /// The GPU with this ordinal (`cuda` is `cuda:0`).
    Cuda(usize),
}

/// The most CPU threads a command may be given: 4 × the cores available (more only adds
/// scheduling overhead; a huge number exhausts the machine).
pub fn max_threads() -> usize {
    4 * std::thread::available_parallelism().map_or(1, |n| n.get())
}

impl FromStr for Device {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Device::Auto),
            "cpu" => Ok(Device::Cpu),
            "cuda" => Ok(Device::Cuda(0)),
            _ => s
                .strip_prefix("cuda:")
                .filter(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse().ok())
                .map(Device::Cuda)
                .ok_or_else(|| {
                    format!("unknown device '{s}' (expected auto, cpu, cuda or cuda:N)")
                }),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Device::Auto => f.write_str("auto"),
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}

impl serde::Serialize for Device {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for Device {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_prints_and_serialises_the_same_strings() {
        for (text, dev) in [
            ("auto", Device::Auto),
            ("cpu", Device::Cpu),
            ("cuda:0", Device::Cuda(0)),
            ("cuda:7", Device::Cuda(7)),
        ] {
            assert_eq!(text.parse::<Device>(), Ok(dev));
            assert_eq!(dev.to_string(), text);
            let json = serde_json::to_string(&dev).unwrap();
            assert_eq!(json, format!("\"{text}\""));
            assert_eq!(serde_json::from_str::<Device>(&json).unwrap(), dev);
        }
        assert_eq!("cuda".parse::<Device>(), Ok(Device::Cuda(0)));
        for bad in ["", "gpu", "cuda:", "cuda:-1", "cuda:+1", "cuda:x", "CPU"] {
            let e = bad.parse::<Device>().unwrap_err();
            assert!(e.contains(&format!("'{bad}'")), "{e}");
        }
        let e = serde_json::from_str::<Device>("\"tpu\"").unwrap_err();
        assert!(e.to_string().contains("unknown device 'tpu'"), "{e}");
    }
}
