{#- Exact arithmetic shared by the gold models (GOLD_SPEC.md: every average is an exact ratio of
    integer sums, rounded half away from zero once, at the end). The forms are portable: the same
    rendered SQL runs on DataFusion and on DuckDB (with `SET integer_division = true`). -#}

{#- num / den rounded half away from zero to an integer; null when den is 0 or null. -#}
{% macro round_div(num, den) -%}
(CASE WHEN ({{ num }}) >= 0 THEN (2 * ({{ num }}) + ({{ den }})) / (2 * NULLIF({{ den }}, 0)) ELSE -((2 * (-({{ num }})) + ({{ den }})) / (2 * NULLIF({{ den }}, 0))) END)
{%- endmacro %}

{#- An integer number of cents as DECIMAL(18,2). -#}
{% macro money(cents) -%}
CAST(CAST({{ cents }} AS DECIMAL(18,0)) * CAST(0.01 AS DECIMAL(3,2)) AS DECIMAL(18,2))
{%- endmacro %}

{#- An integer number of hundredths as DECIMAL(10,2) (day averages, scores). -#}
{% macro hundredths(units) -%}
CAST(CAST({{ units }} AS DECIMAL(18,0)) * CAST(0.01 AS DECIMAL(3,2)) AS DECIMAL(10,2))
{%- endmacro %}

{#- An integer number of ten-thousandths as DECIMAL(10,4) (rates). -#}
{% macro ten_thousandths(units) -%}
CAST(CAST({{ units }} AS DECIMAL(18,0)) * CAST(0.0001 AS DECIMAL(5,4)) AS DECIMAL(10,4))
{%- endmacro %}

{#- A DECIMAL(18,2) amount as integer cents. -#}
{% macro cents(amount) -%}
CAST(({{ amount }}) * 100 AS BIGINT)
{%- endmacro %}

{#- Whole seconds since the epoch of a timestamp. -#}
{% macro epoch_seconds(ts) -%}
CAST(floor(date_part('epoch', {{ ts }})) AS BIGINT)
{%- endmacro %}
