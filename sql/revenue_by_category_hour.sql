-- Purchase revenue per event hour (UTC), category and currency: purchases, units, revenue and
-- the mean unit price.
SELECT
    strftime(date_trunc('hour', event_time), '%Y-%m-%d %H:00') AS hour,
    category_code,
    currency,
    count(*) AS purchases,
    sum(quantity) AS units,
    round(sum(price * quantity), 2) AS revenue,
    avg(price) AS avg_price
FROM fact_events
WHERE event_type = 'purchase'
GROUP BY ALL
ORDER BY hour, category_code, currency;
