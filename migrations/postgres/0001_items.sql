-- The items of /api/items. An identity column never gives out an id twice.
CREATE TABLE items (
    id BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name TEXT NOT NULL,
    CONSTRAINT items_name_key UNIQUE (name)
);
