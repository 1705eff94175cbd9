-- Final tumbling KPI windows per day, window size and category (the lake keeps final windows
-- only): windows, views, carts, purchases, units and revenue per currency.
SELECT
    date AS day,
    window_size_ms // 60000 AS window_minutes,
    dimension_value AS category,
    currency,
    count(*) AS windows,
    sum(views) AS views,
    sum(carts) AS carts,
    sum(purchases) AS purchases,
    sum(units) AS units,
    round(sum(revenue), 2) AS revenue
FROM fact_kpi_windows
WHERE dimension = 'category' AND window_size_ms = window_slide_ms
GROUP BY ALL
ORDER BY day, window_minutes, category, currency;
