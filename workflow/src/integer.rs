//! Integers as JSON Schema reads them: `integer` is any number without a fractional part, so
//! `60.0` is the integer 60. serde's integer types refuse `60.0`; fields that a published schema
//! declares `integer` deserialize with these instead (`#[serde(default, deserialize_with =
//! "workflow::integer::option")]`).

use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, Deserializer, Visitor};

/// An optional integer field of type `T` that also takes `60.0` (and `null` as absent).
pub fn option<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: Deserializer<'de>,
    T: TryFrom<i64> + TryFrom<u64>,
{
    deserializer.deserialize_option(OptionVisitor(PhantomData))
}

struct OptionVisitor<T>(PhantomData<T>);

impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for OptionVisitor<T> {
    type Value = Option<T>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer or null")
    }

    fn visit_none<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_unit<E: de::Error>(self) -> Result<Self::Value, E> {
        Ok(None)
    }

    fn visit_some<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer
            .deserialize_any(IntegerVisitor(PhantomData))
            .map(Some)
    }
}

struct IntegerVisitor<T>(PhantomData<T>);

impl<T: TryFrom<i64> + TryFrom<u64>> IntegerVisitor<T> {
    fn out_of_range<E: de::Error>(value: impl fmt::Display) -> E {
        E::custom(format_args!(
            "{value} is out of range for a {}",
            std::any::type_name::<T>()
        ))
    }
}

impl<'de, T: TryFrom<i64> + TryFrom<u64>> Visitor<'de> for IntegerVisitor<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an integer")
    }

    fn visit_i64<E: de::Error>(self, value: i64) -> Result<T, E> {
        T::try_from(value).map_err(|_| Self::out_of_range(value))
    }

    fn visit_u64<E: de::Error>(self, value: u64) -> Result<T, E> {
        T::try_from(value).map_err(|_| Self::out_of_range(value))
    }

    fn visit_f64<E: de::Error>(self, value: f64) -> Result<T, E> {
        // Exactly representable: -2^63 <= value < 2^63 (2^63 itself is not an i64).
        const TWO_POW_63: f64 = 9_223_372_036_854_775_808.0;
        if value.fract() != 0.0 || !value.is_finite() {
            return Err(E::invalid_type(de::Unexpected::Float(value), &self));
        }
        if (-TWO_POW_63..TWO_POW_63).contains(&value) {
            self.visit_i64(value as i64)
        } else if (0.0..2.0 * TWO_POW_63).contains(&value) {
            self.visit_u64(value as u64)
        } else {
            Err(Self::out_of_range(value))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde::Deserialize;
    use serde_json::json;

    #[derive(Debug, Deserialize, PartialEq)]
    struct Body {
        #[serde(default, deserialize_with = "super::option")]
        n: Option<u32>,
        #[serde(default, deserialize_with = "super::option")]
        v: Option<i64>,
    }

    fn parse(value: serde_json::Value) -> Result<Body, String> {
        serde_json::from_value(value).map_err(|e| e.to_string())
    }

    #[test]
    fn integral_numbers_are_integers_whatever_their_spelling() {
        assert_eq!(
            parse(json!({"n": 60, "v": -3})).unwrap(),
            Body {
                n: Some(60),
                v: Some(-3)
            }
        );
        assert_eq!(
            parse(json!({"n": 60.0, "v": -3.0})).unwrap(),
            Body {
                n: Some(60),
                v: Some(-3)
            }
        );
        assert_eq!(
            parse(json!({"n": null})).unwrap(),
            Body { n: None, v: None }
        );
        assert_eq!(parse(json!({})).unwrap(), Body { n: None, v: None });
    }

    #[test]
    fn fractions_strings_and_out_of_range_numbers_are_refused() {
        for value in [
            json!({"n": 1.5}),
            json!({"n": "60"}),
            json!({"n": -1}),
            json!({"n": 4294967296u64}),
            json!({"n": 1e300}),
            json!({"v": 1e19}),
            json!({"v": u64::MAX}),
        ] {
            assert!(parse(value.clone()).is_err(), "{value}");
        }
    }
}
