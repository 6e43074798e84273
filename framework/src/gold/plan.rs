//! `framework validate`'s SQL check: every model is planned by DataFusion against empty tables
//! shaped like the silver tables the idcards describe, so an unknown column, a misspelt function
//! or broken SQL is reported with the model's file before any run.

use std::collections::BTreeMap;
use std::sync::Arc;

use deltalake::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use deltalake::datafusion::catalog::MemorySchemaProvider;
use deltalake::datafusion::datasource::MemTable;
use deltalake::datafusion::prelude::SessionContext;

use crate::idcard::compile::enrich_column_names;
use crate::idcard::position::Pos;
use crate::idcard::{Diagnostic, Diagnostics, Project, Table};
use crate::lake::session;

use super::config::Materialized;
use super::project::{Model, Models};

/// The columns of each model that plans and is not ephemeral, by relation
/// (`gold.gold_daily_sales`).
pub type Shapes = BTreeMap<String, Arc<Schema>>;

/// Plans every model in dependency order; collects a diagnostic per model that does not plan
/// (a model whose input failed is not reported again). Answers the planned models' shapes.
pub async fn check_sql(models: &Models, project: &Project) -> Result<Shapes, Diagnostics> {
    let ctx = session();
    crate::pii::udf::register(&ctx, &std::sync::Arc::default());
    let mut problems = Vec::new();
    let catalog = ctx
        .catalog("datafusion")
        .expect("the default catalog exists");
    let mut schemas: Vec<&str> = vec!["silver", "bronze"];
    schemas.extend(models.models.iter().map(|m| m.folder.as_str()));
    for schema in schemas {
        if catalog.schema(schema).is_none() {
            let _ = catalog.register_schema(schema, Arc::new(MemorySchemaProvider::new()));
        }
    }
    for (name, schema) in silver_schemas(project) {
        register_empty(&ctx, &format!("silver.{name}"), schema);
    }
    let mut failed: Vec<&str> = Vec::new();
    let mut shapes = Shapes::new();
    for model in &models.models {
        if model.refs.iter().any(|r| failed.contains(&r.as_str()))
            || model.sources.iter().any(|(layer, _)| layer != "silver")
        {
            failed.push(&model.name);
            continue;
        }
        match plan(&ctx, models, model).await {
            Ok(Some(shape)) => {
                shapes.insert(model.relation(), shape);
            }
            Ok(None) => {}
            Err(problem) => {
                problems.push(problem);
                failed.push(&model.name);
            }
        }
    }
    if problems.is_empty() {
        Ok(shapes)
    } else {
        Err(Diagnostics(problems))
    }
}

/// Plans one model and registers an empty table of its result (for the models that read it);
/// answers its shape unless it is ephemeral.
async fn plan(
    ctx: &SessionContext,
    models: &Models,
    model: &Model,
) -> Result<Option<Arc<Schema>>, Diagnostic> {
    let error = |e: String| Diagnostic {
        file: models.dir.join(&model.path),
        pos: Pos { line: 1, column: 1 },
        field: String::new(),
        message: format!("the SQL does not plan: {e}"),
        hint: Some(format!(
            "`framework compile --select {}` prints the rendered SQL; a silver table has its \
             idcard's columns, the enrichment columns and _sequence, _partition, _offset",
            model.name
        )),
    };
    let render = |incremental| {
        models
            .render(model, incremental)
            .map_err(|d| error(d.to_string()))
    };
    match model.config.materialized {
        Materialized::Ephemeral => Ok(None),
        Materialized::View => {
            let frame = ctx
                .sql(&render(false)?)
                .await
                .map_err(|e| error(e.to_string()))?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            ctx.register_table(model.relation(), frame.into_view())
                .map_err(|e| error(e.to_string()))?;
            Ok(Some(schema))
        }
        Materialized::Table | Materialized::Incremental => {
            let frame = ctx
                .sql(&render(false)?)
                .await
                .map_err(|e| error(e.to_string()))?;
            let schema = Arc::new(frame.schema().as_arrow().clone());
            register_empty(ctx, &model.relation(), schema.clone());
            if model.config.materialized == Materialized::Incremental {
                ctx.sql(&render(true)?)
                    .await
                    .map_err(|e| error(format!("(incremental run) {e}")))?;
            }
            Ok(Some(schema))
        }
    }
}

fn register_empty(ctx: &SessionContext, relation: &str, schema: Arc<Schema>) {
    let table = MemTable::try_new(schema, vec![vec![]]).expect("an empty table of any schema");
    let _ = ctx.deregister_table(relation);
    let _ = ctx.register_table(relation, Arc::new(table));
}

/// The shape of every silver table: each idcard's columns, its enrichment columns and the
/// bookkeeping columns; a `latest_by` table has its table's shape.
fn silver_schemas(project: &Project) -> Vec<(String, Arc<Schema>)> {
    let mut out = Vec::new();
    for table in &project.tables {
        let schema = Arc::new(Schema::new(silver_fields(project, table)));
        for latest in &table.config.latest_by {
            out.push((latest.name.clone(), schema.clone()));
        }
        out.push((table.name().to_owned(), schema));
    }
    out
}

fn silver_fields(project: &Project, table: &Table) -> Vec<Field> {
    let mut fields = table.arrow_fields();
    for enrich in &table.config.enrich {
        let Some(other) = project.table(&enrich.from) else {
            continue;
        };
        for column in &enrich.columns {
            let (source, target) = enrich_column_names(column);
            if let Some(c) = other.column(&source) {
                fields.push(Field::new(target, c.data_type.arrow(), true));
            }
        }
    }
    let sequence = table.column(&table.config.sequence_by).map_or(
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        |c| c.data_type.arrow(),
    );
    fields.extend([
        Field::new("_sequence", sequence, true),
        Field::new("_partition", DataType::Int32, true),
        Field::new("_offset", DataType::Int64, true),
    ]);
    fields
}
