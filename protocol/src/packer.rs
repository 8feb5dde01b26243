//! The two packers a controller may publish in its connection files.

use serde::{de::DeserializeOwned, Serialize};

/// Deepest nesting accepted from a peer.
pub const MAX_DEPTH: usize = 128;
use std::fmt;
use std::str::FromStr;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Packer {
    Json,
    Msgpack,
}

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    #[error("msgpack encode: {0}")]
    MsgpackEncode(#[from] rmp_serde::encode::Error),
    #[error("msgpack decode: {0}")]
    MsgpackDecode(#[from] rmp_serde::decode::Error),
}

#[derive(Debug, thiserror::Error)]
#[error("unsupported packer {0:?}: use json or msgpack")]
pub struct UnknownPacker(pub String);

impl Packer {
    /// Serialises with Python's conventions: text as msgpack `str`, structs as maps with
    /// string keys (never rmp-serde's default arrays), floats as float64.
    pub fn pack<T: Serialize + ?Sized>(self, value: &T) -> Result<Vec<u8>, PackError> {
        Ok(match self {
            Packer::Json => serde_json::to_vec(value)?,
            Packer::Msgpack => rmp_serde::to_vec_named(value)?,
        })
    }

    pub fn unpack<T: DeserializeOwned>(self, bytes: &[u8]) -> Result<T, PackError> {
        Ok(match self {
            Packer::Json => serde_json::from_slice(bytes)?,
            Packer::Msgpack => {
                // serde_json stops at 128 levels; rmp-serde's default of 1024 can overflow
                // a 2 MiB thread stack in unoptimised builds. No Python peer nests this deep.
                let mut de = rmp_serde::Deserializer::new(bytes);
                de.set_max_depth(MAX_DEPTH);
                T::deserialize(&mut de)?
            }
        })
    }

    /// The name written to the connection files; peers take it verbatim.
    pub fn name(self) -> &'static str {
        match self {
            Packer::Json => "json",
            Packer::Msgpack => "msgpack",
        }
    }
}

impl FromStr for Packer {
    type Err = UnknownPacker;

    /// Accepts the names jupyter_client accepts for these two formats, case-insensitively.
    /// `orjson` is the stock controller's default and is plain JSON on the wire.
    fn from_str(s: &str) -> Result<Self, UnknownPacker> {
        match s.to_ascii_lowercase().as_str() {
            "json" | "orjson" | "json.dumps" | "json.loads" | "orjson.dumps" | "orjson.loads" => Ok(Packer::Json),
            "msgpack" | "msgpack.packb" | "msgpack.unpackb" => Ok(Packer::Msgpack),
            _ => Err(UnknownPacker(s.to_owned())),
        }
    }
}

impl fmt::Display for Packer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmap;
    use crate::Value;

    #[derive(Serialize, serde::Deserialize, Debug, PartialEq)]
    struct Reply {
        id: u64,
        status: String,
        hb_period: u64,
        ratio: f64,
    }

    #[test]
    fn structs_pack_as_maps_with_python_encodings() {
        let r = Reply { id: 0, status: "ok".into(), hb_period: 1000, ratio: 1.0 };
        let b = Packer::Msgpack.pack(&r).unwrap_or_default();
        // fixmap 4, "id" 0, "status" "ok", "hb_period" cd 03 e8, "ratio" cb (float64)
        assert_eq!(b[0], 0x84);
        assert!(b.windows(3).any(|w| w == [0xcd, 0x03, 0xe8]));
        assert!(b.contains(&0xcb));
        let back: Reply = Packer::Msgpack.unpack(&b).expect("unpack");
        assert_eq!(back, r);
    }

    #[test]
    fn names() {
        assert_eq!("MsgPack".parse::<Packer>().ok(), Some(Packer::Msgpack));
        assert_eq!("orjson".parse::<Packer>().ok(), Some(Packer::Json));
        assert!("pickle".parse::<Packer>().is_err());
    }

    #[test]
    fn json_and_msgpack_agree_on_values() {
        let v = vmap! {"a" => 1i64, "b" => Value::Array(vec![Value::Nil, Value::Float(0.5)]), "c" => "é"};
        for p in [Packer::Json, Packer::Msgpack] {
            let back: Value = p.unpack(&p.pack(&v).unwrap_or_default()).expect("round trip");
            assert_eq!(back, v);
        }
    }
}
