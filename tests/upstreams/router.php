<?php
// PHP's built-in server (php -S): what $_SERVER says. PHP reads `X-User-Id`, `X_User_Id` and
// `X.User.Id` all as HTTP_X_USER_ID, which is why the gateway drops `_` and `.` spellings.
// Run: php -d enable_post_data_reading=0 -S 127.0.0.1:PORT router.php
$path = parse_url($_SERVER['REQUEST_URI'], PHP_URL_PATH);
header('X-Upstream: php');
$pattern = str_repeat('0123456789abcdef', 4096);

function reply($code, $data) {
    http_response_code($code);
    header('Content-Type: application/json');
    echo json_encode($data, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
}

if (preg_match('#^/[^/]+/whoami$#', $path)) {
    $email = $_SERVER['HTTP_X_USER_EMAIL'] ?? null;
    $http = array_filter($_SERVER, fn ($k) => str_starts_with($k, 'HTTP_'), ARRAY_FILTER_USE_KEY);
    reply(200, [
        'user_id' => $_SERVER['HTTP_X_USER_ID'] ?? null,
        'email' => $email === null ? null : rawurldecode($email),
        'session_id' => $_SERVER['HTTP_X_SESSION_ID'] ?? null,
        'scheme' => $_SERVER['HTTP_X_FORWARDED_PROTO'] ?? (empty($_SERVER['HTTPS']) ? 'http' : 'https'),
        'secure' => !empty($_SERVER['HTTPS']),
        'host' => $_SERVER['HTTP_X_FORWARDED_HOST'] ?? $_SERVER['HTTP_HOST'],
        'remote_addr' => $_SERVER['HTTP_X_FORWARDED_FOR'] ?? $_SERVER['REMOTE_ADDR'],
        'script_root' => $_SERVER['HTTP_X_FORWARDED_PREFIX'] ?? '',
        'server' => $http,
    ]);
} elseif (preg_match('#^/[^/]+/upload$#', $path)) {
    $in = fopen('php://input', 'rb');
    $ctx = hash_init('sha256');
    $length = 0;
    while (!feof($in)) {
        $chunk = fread($in, 65536);
        if ($chunk === false || $chunk === '') { break; }
        hash_update($ctx, $chunk);
        $length += strlen($chunk);
    }
    reply(200, ['length' => $length, 'sha256' => hash_final($ctx)]);
} elseif (preg_match('#^/[^/]+/download$#', $path)) {
    $left = (int) $_GET['bytes'];
    header('Content-Type: application/octet-stream');
    header('Content-Length: ' . $left);
    while ($left > 0) {
        $piece = substr($pattern, 0, min($left, strlen($pattern)));
        $left -= strlen($piece);
        echo $piece;
        flush();
    }
} elseif (preg_match('#^/[^/]+/status/(\d+)$#', $path, $m)) {
    reply((int) $m[1], ['upstream_error' => (int) $m[1]]);
} elseif (preg_match('#^/[^/]+/crash$#', $path)) {
    throw new RuntimeException('crash on purpose');
} else {
    http_response_code(404);
    header('Content-Type: text/plain');
    echo "php: no such path\n";
}
