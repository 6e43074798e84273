//! Where each value of a YAML document sits, by JSON pointer, so that errors found on the parsed
//! value (JSON Schema, semantic checks) can name the line and column a user must edit.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// A 1-based line and column in a source file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Pos {
    pub line: usize,
    pub column: usize,
}

impl Pos {
    fn from_marker(mark: Marker) -> Self {
        // yaml-rust2 counts lines from 1 and columns from 0.
        Self {
            line: mark.line(),
            column: mark.col() + 1,
        }
    }
}

/// JSON pointer -> position of the value, and of the key naming it when it sits in a mapping.
#[derive(Debug, Default)]
pub struct PositionIndex {
    values: HashMap<String, Pos>,
    keys: HashMap<String, Pos>,
}

/// A YAML syntax error with its position.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

impl PositionIndex {
    /// Parses `text`; a syntax error comes back with its position.
    pub fn parse(text: &str) -> Result<Self, SyntaxError> {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        parser
            .load(&mut builder, false)
            .map_err(|err| SyntaxError {
                pos: Pos::from_marker(*err.marker()),
                message: err.info().to_owned(),
            })?;
        Ok(builder.index)
    }

    /// Position of the key of `pointer` if it is a mapping entry, else of its value, else of the
    /// nearest enclosing value that exists (a missing field is reported where its parent starts).
    pub fn locate(&self, pointer: &str) -> Pos {
        let mut pointer = pointer;
        loop {
            if let Some(pos) = self.keys.get(pointer).or_else(|| self.values.get(pointer)) {
                return *pos;
            }
            match pointer.rfind('/') {
                Some(cut) => pointer = &pointer[..cut],
                None => return Pos { line: 1, column: 1 },
            }
        }
    }

    /// Position of the value at `pointer` (falls back like [`Self::locate`]).
    pub fn locate_value(&self, pointer: &str) -> Pos {
        self.values
            .get(pointer)
            .copied()
            .unwrap_or_else(|| self.locate(pointer))
    }
}

/// Escapes one JSON-pointer segment.
pub fn escape(segment: &str) -> String {
    segment.replace('~', "~0").replace('/', "~1")
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    index: PositionIndex,
    stack: Vec<Frame>,
}

impl Builder {
    /// Path of the node starting now, or `None` when the node is a mapping key.
    fn node_path(&mut self, event: &Event, pos: Pos) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Seq { path, next }) => {
                let node = format!("{path}/{next}");
                *next += 1;
                Some(node)
            }
            Some(Frame::Map { path, key }) => match key.take() {
                Some(name) => Some(format!("{path}/{}", escape(&name))),
                None => {
                    let name = match event {
                        Event::Scalar(value, ..) => value.clone(),
                        _ => String::from("?"),
                    };
                    self.index
                        .keys
                        .insert(format!("{path}/{}", escape(&name)), pos);
                    *key = Some(name);
                    None
                }
            },
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, event: Event, mark: Marker) {
        let pos = Pos::from_marker(mark);
        match event {
            Event::Scalar(..) | Event::Alias(_) => {
                if let Some(path) = self.node_path(&event, pos) {
                    self.index.values.insert(path, pos);
                }
            }
            Event::MappingStart(..) | Event::SequenceStart(..) => {
                let path = self.node_path(&event, pos).unwrap_or_default();
                self.index.values.insert(path.clone(), pos);
                self.stack.push(match event {
                    Event::MappingStart(..) => Frame::Map { path, key: None },
                    _ => Frame::Seq { path, next: 0 },
                });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}
