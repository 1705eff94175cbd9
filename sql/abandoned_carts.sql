-- Abandoned carts per day of the session start: sessions that put something in the cart, those
-- of them that bought nothing, the abandonment rate, and the value of what the abandoned
-- sessions carted (price x quantity of their cart events, from the facts).
WITH carted AS (
    SELECT user_session, sum(price * quantity) AS carted_value
    FROM fact_events
    WHERE event_type = 'cart'
    GROUP BY user_session
)
SELECT
    s.date AS day,
    count(*) AS cart_sessions,
    count(*) FILTER (WHERE NOT s.converted) AS abandoned,
    round(abandoned / cart_sessions, 4) AS abandonment_rate,
    round(coalesce(sum(c.carted_value) FILTER (WHERE NOT s.converted), 0), 2) AS abandoned_value
FROM fact_sessions s
LEFT JOIN carted c ON c.user_session = s.session_id
WHERE s.carts > 0
GROUP BY s.date
ORDER BY day;
