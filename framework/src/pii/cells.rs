//! Every string cell of an Arrow array, nested leaves included (struct fields, list elements),
//! mapped by a function: how re-encryption and the gateway's decrypted reads reach ciphertext
//! without a list of columns or paths (a string that is not a value of the keyring is left as
//! it is: see [`super::Keyring::reencrypt`] and [`super::Keyring::decrypt_any`]).

use std::sync::Arc;

use deltalake::arrow::array::{Array, ArrayRef, AsArray, ListArray, StringArray, StructArray};
use deltalake::arrow::compute::cast;
use deltalake::arrow::datatypes::DataType;
use deltalake::arrow::error::ArrowError;

/// `array` with each string `s` for which `f(s)` is `Some(t)` replaced by `t`; the types are
/// kept (dictionaries are left alone: they hold partition values, not ciphertext).
pub fn map_strings<E: From<ArrowError>>(
    array: &ArrayRef,
    f: &mut dyn FnMut(&str) -> Result<Option<String>, E>,
) -> Result<ArrayRef, E> {
    Ok(match array.data_type() {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            let text = cast(array, &DataType::Utf8).map_err(E::from)?;
            let text = text.as_string::<i32>();
            let mut changed = false;
            let mut out = Vec::with_capacity(text.len());
            for value in text.iter() {
                out.push(match value {
                    None => None,
                    Some(value) => match f(value)? {
                        Some(new) => {
                            changed = true;
                            Some(new)
                        }
                        None => Some(value.to_owned()),
                    },
                });
            }
            if !changed {
                return Ok(array.clone());
            }
            cast(&StringArray::from(out), array.data_type()).map_err(E::from)?
        }
        DataType::Struct(_) => {
            let structs = array.as_struct();
            let children = structs
                .columns()
                .iter()
                .map(|c| map_strings(c, f))
                .collect::<Result<Vec<_>, _>>()?;
            Arc::new(
                StructArray::try_new(structs.fields().clone(), children, structs.nulls().cloned())
                    .map_err(E::from)?,
            )
        }
        DataType::List(field) => {
            let lists = array.as_list::<i32>();
            Arc::new(
                ListArray::try_new(
                    field.clone(),
                    lists.offsets().clone(),
                    map_strings(lists.values(), f)?,
                    lists.nulls().cloned(),
                )
                .map_err(E::from)?,
            )
        }
        _ => array.clone(),
    })
}
