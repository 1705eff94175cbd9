-- Conversion funnel per day and category: events of each type, the sessions that reached each
-- step (viewed, carted, bought) and the step rates between them.
SELECT
    date AS day,
    category_code,
    count(*) FILTER (WHERE event_type = 'view') AS views,
    count(*) FILTER (WHERE event_type = 'cart') AS carts,
    count(*) FILTER (WHERE event_type = 'remove_from_cart') AS removals,
    count(*) FILTER (WHERE event_type = 'purchase') AS purchases,
    count(DISTINCT user_session) FILTER (WHERE event_type = 'view') AS view_sessions,
    count(DISTINCT user_session) FILTER (WHERE event_type = 'cart') AS cart_sessions,
    count(DISTINCT user_session) FILTER (WHERE event_type = 'purchase') AS purchase_sessions,
    round(cart_sessions / nullif(view_sessions, 0), 4) AS view_to_cart,
    round(purchase_sessions / nullif(cart_sessions, 0), 4) AS cart_to_purchase
FROM fact_events
GROUP BY day, category_code
ORDER BY day, category_code;
