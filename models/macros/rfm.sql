{#- The RFM segment of a customer (GOLD_SPEC.md, gold_customer_rfm): the first rule that matches. -#}
{% macro rfm_segment(recency, frequency, monetary) -%}
CASE
        WHEN {{ recency }} <= 30 AND {{ frequency }} >= 3 AND {{ monetary }} >= 500 THEN 'Champions'
        WHEN {{ frequency }} >= 3 THEN 'Loyal Customers'
        WHEN {{ recency }} <= 30 AND {{ frequency }} < 3 THEN 'Potential Loyalists'
        WHEN {{ recency }} > 90 AND {{ frequency }} >= 2 THEN 'At Risk'
        WHEN {{ recency }} > 90 THEN 'Hibernating'
        ELSE 'Others'
    END
{%- endmacro %}
