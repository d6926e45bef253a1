-- The items of /api/items. AUTOINCREMENT: an id is never given out twice, even after the item
-- with the highest id is deleted, so a URL never comes to name another item.
CREATE TABLE items (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    CONSTRAINT items_name_key UNIQUE (name)
);
