//! `pii_decrypt(column)` in gold SQL: the plaintext of an encrypted value, when this run holds
//! the key its key id names (either mode, any domain); a run without it fails with an error that
//! says so, rather than returning ciphertext as if it were data. A value whose subject key was
//! erased (`framework keys forget`) is null: it is gone, by design. `pii_same(a, b)` for silver:
//! whether two values of a randomized column hold the same plaintext.

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, BooleanArray, StringBuilder};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::datafusion::common::ScalarValue;
use deltalake::datafusion::error::DataFusionError;
use deltalake::datafusion::logical_expr::{ColumnarValue, Volatility, create_udf};
use deltalake::datafusion::prelude::SessionContext;

use super::Keyring;

/// Registers `pii_decrypt` in `ctx`, decrypting with `keys`.
pub fn register(ctx: &SessionContext, keys: &Arc<Keyring>) {
    let keys = keys.clone();
    let decrypt = Arc::new(move |args: &[ColumnarValue]| {
        let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let text = cast(&arrays[0], &DataType::Utf8)?;
        let text = text.as_string::<i32>();
        let mut out = StringBuilder::with_capacity(text.len(), text.value_data().len());
        for i in 0..text.len() {
            if text.is_null(i) {
                out.append_null();
                continue;
            }
            let plain = match keys.open(text.value(i)) {
                Some(Ok(plain)) => plain,
                Some(Err(super::cipher::CipherError::Forgotten { .. })) => {
                    out.append_null();
                    continue;
                }
                _ => {
                    return Err(DataFusionError::Execution(
                    "pii_decrypt: a value this run cannot decrypt (no key for its key id in this \
                     environment's keyset, or not an encrypted value)\n  hint: set the \
                     environment's root key (FRAMEWORK_ROOT_KEY or FRAMEWORK_ROOT_KEY_FILE) and \
                     FRAMEWORK_ENV"
                        .to_owned(),
                    ));
                }
            };
            out.append_value(String::from_utf8_lossy(&plain));
        }
        columnar(Arc::new(out.finish()), scalar)
    });
    ctx.register_udf(create_udf(
        "pii_decrypt",
        vec![DataType::Utf8],
        DataType::Utf8,
        Volatility::Immutable,
        decrypt,
    ));
}

/// Registers `pii_same(a, b)` in `ctx`: true when both are null, or equal, or both decrypt with
/// `keys` to the same plaintext; false otherwise (a value these keys cannot open counts as
/// different). A randomized column's ciphertext changes at every encryption, so an unchanged row
/// sent again compares equal only by its plaintext.
pub fn register_same(ctx: &SessionContext, keys: &Arc<Keyring>) {
    let keys = keys.clone();
    let same = Arc::new(move |args: &[ColumnarValue]| {
        let scalar = args.iter().all(|a| matches!(a, ColumnarValue::Scalar(_)));
        let arrays = ColumnarValue::values_to_arrays(args)?;
        let (a, b) = (
            cast(&arrays[0], &DataType::Utf8)?,
            cast(&arrays[1], &DataType::Utf8)?,
        );
        let (a, b) = (a.as_string::<i32>(), b.as_string::<i32>());
        let result: BooleanArray = (0..a.len())
            .map(|i| {
                Some(match (a.is_null(i), b.is_null(i)) {
                    (true, true) => true,
                    (false, false) => {
                        let (x, y) = (a.value(i), b.value(i));
                        x == y
                            || keys
                                .decrypt_any(x)
                                .zip(keys.decrypt_any(y))
                                .is_some_and(|(x, y)| x == y)
                    }
                    _ => false,
                })
            })
            .collect();
        columnar(Arc::new(result), scalar)
    });
    ctx.register_udf(create_udf(
        "pii_same",
        vec![DataType::Utf8, DataType::Utf8],
        DataType::Boolean,
        Volatility::Immutable,
        same,
    ));
}

/// A UDF's result: `array`, or its one value when every argument was a scalar.
fn columnar(array: ArrayRef, scalar: bool) -> deltalake::datafusion::error::Result<ColumnarValue> {
    Ok(if scalar {
        ColumnarValue::Scalar(ScalarValue::try_from_array(&array, 0)?)
    } else {
        ColumnarValue::Array(array)
    })
}
