//! The parameters of `POST /rides`: parsed from a JSON or form body, checked,
//! and turned into the canonical JSON stored with an idempotency key.
//!
//! Pure functions, no I/O: a request with the same key must carry the same
//! parameters, and "the same" is decided here, on [`RideParams::to_json`].

use serde_json::{json, Map, Value};

/// The four coordinates of a ride, in degrees.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RideParams {
    pub origin_lat: f64,
    pub origin_lon: f64,
    pub target_lat: f64,
    pub target_lon: f64,
}

/// Why the parameters were refused; the API answers 422 with the message.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParamError {
    #[error("Please specify parameter {0:?}.")]
    Missing(&'static str),
    #[error("Parameter {0:?} must be a number.")]
    NotANumber(&'static str),
    #[error("Parameter {0:?} must be between {1} and {2}.")]
    OutOfRange(&'static str, i32, i32),
}

/// The body was neither JSON nor a form; the API answers 400.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error("The request body must be a JSON object or a form ({0}).")]
pub struct BodyError(String);

/// Parses a request body into name -> value. An empty body is no parameters;
/// `application/x-www-form-urlencoded` is a form, anything else JSON.
pub fn parse_body(
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Map<String, Value>, BodyError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    let is_form = content_type.is_some_and(|ct| {
        ct.trim_start()
            .starts_with("application/x-www-form-urlencoded")
    });
    if is_form {
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_bytes(body).map_err(|e| BodyError(e.to_string()))?;
        return Ok(pairs
            .into_iter()
            .map(|(name, value)| (name, Value::String(value)))
            .collect());
    }
    match serde_json::from_slice(body) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(BodyError("not an object".into())),
        Err(e) => Err(BodyError(e.to_string())),
    }
}

impl RideParams {
    /// Takes the coordinates from `params` (numbers, or strings of numbers).
    pub fn from_map(params: &Map<String, Value>) -> Result<RideParams, ParamError> {
        Ok(RideParams {
            origin_lat: coordinate(params, "origin_lat", 90)?,
            origin_lon: coordinate(params, "origin_lon", 180)?,
            target_lat: coordinate(params, "target_lat", 90)?,
            target_lon: coordinate(params, "target_lon", 180)?,
        })
    }

    /// The canonical form stored in `idempotency_keys.request_params`.
    pub fn to_json(&self) -> Value {
        json!({
            "origin_lat": self.origin_lat,
            "origin_lon": self.origin_lon,
            "target_lat": self.target_lat,
            "target_lon": self.target_lon,
        })
    }

    /// Reads back what [`RideParams::to_json`] stored.
    pub fn from_json(value: &Value) -> Result<RideParams, ParamError> {
        match value {
            Value::Object(map) => RideParams::from_map(map),
            _ => Err(ParamError::Missing("origin_lat")),
        }
    }

    /// Great-circle distance in kilometres (haversine).
    pub fn distance_km(&self) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0;
        let (lat1, lat2) = (self.origin_lat.to_radians(), self.target_lat.to_radians());
        let d_lat = lat2 - lat1;
        let d_lon = (self.target_lon - self.origin_lon).to_radians();
        let a = (d_lat / 2.0).sin().powi(2) + lat1.cos() * lat2.cos() * (d_lon / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * a.sqrt().min(1.0).asin()
    }
}

fn coordinate(
    params: &Map<String, Value>,
    name: &'static str,
    limit: i32,
) -> Result<f64, ParamError> {
    let value = match params.get(name) {
        None | Some(Value::Null) => return Err(ParamError::Missing(name)),
        Some(Value::String(s)) if s.trim().is_empty() => return Err(ParamError::Missing(name)),
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        Some(_) => None,
    };
    let value = value
        .filter(|v| v.is_finite())
        .ok_or(ParamError::NotANumber(name))?;
    if value.abs() > f64::from(limit) {
        return Err(ParamError::OutOfRange(name, -limit, limit));
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(m) => m,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn parses_json_and_form_alike() {
        let form = parse_body(
            Some("application/x-www-form-urlencoded"),
            b"origin_lat=1.5&origin_lon=-2&target_lat=0&target_lon=179.9",
        )
        .unwrap();
        let json = parse_body(
            Some("application/json"),
            br#"{"origin_lat": 1.5, "origin_lon": -2, "target_lat": 0, "target_lon": 179.9}"#,
        )
        .unwrap();
        let a = RideParams::from_map(&form).unwrap();
        let b = RideParams::from_map(&json).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.to_json(), b.to_json());
        assert_eq!(RideParams::from_json(&a.to_json()), Ok(a));
    }

    #[test]
    fn refusals_name_the_parameter() {
        let cases = [
            (json!({}), ParamError::Missing("origin_lat")),
            (
                json!({"origin_lat": 1, "origin_lon": "x", "target_lat": 0, "target_lon": 0}),
                ParamError::NotANumber("origin_lon"),
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 1, "target_lat": "inf", "target_lon": 0}),
                ParamError::NotANumber("target_lat"),
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 1, "target_lat": 91, "target_lon": 0}),
                ParamError::OutOfRange("target_lat", -90, 90),
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 1, "target_lat": 0, "target_lon": -180.5}),
                ParamError::OutOfRange("target_lon", -180, 180),
            ),
            (
                json!({"origin_lat": 1, "origin_lon": 1, "target_lat": 0, "target_lon": ""}),
                ParamError::Missing("target_lon"),
            ),
            (
                json!({"origin_lat": [1], "origin_lon": 1, "target_lat": 0, "target_lon": 0}),
                ParamError::NotANumber("origin_lat"),
            ),
        ];
        for (params, expected) in cases {
            assert_eq!(
                RideParams::from_map(&map(params.clone())),
                Err(expected),
                "{params}"
            );
        }
    }

    #[test]
    fn bad_bodies() {
        assert!(parse_body(Some("application/json"), b"[1]").is_err());
        assert!(parse_body(None, b"{nope").is_err());
        assert_eq!(parse_body(None, b"  "), Ok(Map::new()));
    }

    #[test]
    fn distance() {
        let p = RideParams {
            origin_lat: 0.0,
            origin_lon: 0.0,
            target_lat: 0.0,
            target_lon: 1.0,
        };
        assert!(
            (p.distance_km() - 111.19).abs() < 0.01,
            "{}",
            p.distance_km()
        );
        let same = RideParams {
            target_lon: 0.0,
            ..p
        };
        assert_eq!(same.distance_km(), 0.0);
    }
}
